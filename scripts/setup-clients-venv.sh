#!/usr/bin/env bash
# The client frameworks the e2e tests drive the gateway with, in environments of
# their own (their pins must not touch vLLM's): .clients-venv holds LangChain's
# ChatOpenAI and the LiteLLM SDK (openai 2.x); .agents-venv the OpenAI Agents SDK
# (openai 3.x). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

setup() {  # VENV PACKAGE...
  local venv=$1
  shift
  local stamp="$venv/.switchyard-installed"
  local want="$* $(sha256sum < "$0" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo ">>> setting up $venv with $* (clients the e2e tests use)"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip --disable-pip-version-check install --progress-bar on "$@"
  echo "$want" > "$stamp"
}

setup "${CLIENTS_VENV:-.clients-venv}" \
  "langchain-openai==${LANGCHAIN_OPENAI_VERSION:-1.7.3}" "litellm==${LITELLM_VERSION:-1.80.0}"
setup "${AGENTS_VENV:-.agents-venv}" "openai-agents==${OPENAI_AGENTS_VERSION:-0.24.0}"
