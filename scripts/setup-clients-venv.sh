#!/usr/bin/env bash
# .clients-venv: the client frameworks the e2e tests drive the gateway with (LangChain's
# ChatOpenAI, the LiteLLM SDK), in their own environment: their pins (openai 2.x,
# huggingface_hub) must not touch vLLM's. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CLIENTS_VENV:-.clients-venv}
PYTHON=${PYTHON:-python3}
CLIENTS=("langchain-openai==${LANGCHAIN_OPENAI_VERSION:-1.7.3}" "litellm==${LITELLM_VERSION:-1.80.0}")
stamp="$VENV/.switchyard-installed"
want="${CLIENTS[*]} $(sha256sum < "$0" | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo ">>> setting up $VENV with ${CLIENTS[*]} (the clients the e2e tests use)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar on "${CLIENTS[@]}"
echo "$want" > "$stamp"
