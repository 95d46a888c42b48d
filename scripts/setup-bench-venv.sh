#!/usr/bin/env bash
# .bench-venv: the peers `make bench` measures Switchyard against (LiteLLM's proxy),
# in their own environment so their pins never touch Switchyard's. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-.bench-venv}
PYTHON=${PYTHON:-python3}
LITELLM="litellm[proxy]==${LITELLM_VERSION:-1.80.0}"
stamp="$VENV/.switchyard-installed"
want="$LITELLM $(sha256sum < "$0" | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo ">>> setting up $VENV with $LITELLM (the peer gateway the overhead benchmark runs)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar on "$LITELLM"
"$VENV/bin/litellm" --version
echo "$want" > "$stamp"
