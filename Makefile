# Two commands on a fresh machine: `make serve` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HOST    ?= 127.0.0.1
PORT    ?= 8000
MODEL   := models/smollm2-135m-instruct
GPU     := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
CONFIG  ?= $(if $(GPU),configs/demo-gpu.yaml,configs/demo.yaml)
PYTEST_ARGS ?=

.PHONY: serve test chaos system-deps check venv model adapters format lint types clients-venv bench-engine bench-embeddings bench-adapters bench-routing bench-metrics bench-cache bench-auth build-venv artifacts bench-artifacts bench-venv bench bench-overhead bench-resume

## serve: set everything up (venv, vLLM, demo model) and serve the demo model
serve: model
	@echo ">>> serving $(MODEL) as smollm2-135m-instruct on http://$(HOST):$(PORT) (ready in ~30 s)"
	@echo ">>> try:  curl http://$(HOST):$(PORT)/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"smollm2-135m-instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'"
	$(VENV)/bin/switchyard serve --config $(CONFIG) --host $(HOST) --port $(PORT)

## test: set everything up and run the whole test suite (CI runs this)
test: model system-deps build-venv clients-venv
	$(PY) -m pytest $(PYTEST_ARGS)

## chaos: ten minutes of seeded faults against real replicas, Redis and two gateways
## (`make test` runs 75 s of it); replay a run with CHAOS_ARGS="--seed N"
CHAOS_ARGS ?=
chaos: model system-deps
	$(PY) -m tests.chaos --duration 600 $(CHAOS_ARGS)

## system-deps: Debian packages the tests run for real (prometheus, redis-server)
system-deps:
	@scripts/system-deps.sh

## check: format check, lint, types, tests
check: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(MAKE) test

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

venv:
	@scripts/setup-venv.sh

model: venv
	@$(VENV)/bin/switchyard-build demo-model --out $(MODEL)

## adapters: retrain the demo adapters (committed in adapters/; ~4 min each on 2 cores)
adapters: model
	rm -rf adapters/shout adapters/json
	$(VENV)/bin/switchyard-build train-lora shout
	$(VENV)/bin/switchyard-build train-lora json

build-venv:
	@scripts/setup-build-venv.sh

clients-venv:
	@scripts/setup-clients-venv.sh

## artifacts: GPTQ, AWQ, W8A8 and merged-`shout` builds of the demo model (~10 min on CPU);
## serve them side by side with `switchyard serve --config configs/artifacts.yaml`
ARTIFACTS := artifacts/smollm2-135m-instruct
BUILD     := .build-venv/bin/switchyard-build
artifacts: $(foreach a,gptq awq w8a8 shout,$(ARTIFACTS)-$(a)/switchyard-artifact.json)

$(ARTIFACTS)-%/switchyard-artifact.json: | model build-venv
	$(BUILD) quantize --method $* --model $(MODEL) --out $(ARTIFACTS)-$*

$(ARTIFACTS)-shout/switchyard-artifact.json: | model build-venv
	$(BUILD) merge adapters/shout --base $(MODEL) --out $(ARTIFACTS)-shout

## bench-artifacts: each artifact vs bf16 through the gateway: tokens/s, memory, load time, quality
bench-artifacts: artifacts
	$(VENV)/bin/switchyard bench artifacts

bench-venv:
	@scripts/setup-bench-venv.sh

## bench: the side-by-side suite (overhead vs LiteLLM, engine path, embeddings, routing, cache) -> docs/benchmarks/
bench: model system-deps bench-tools bench-venv
	$(VENV)/bin/switchyard bench suite

## bench-overhead: Switchyard and LiteLLM's proxy in front of one fast upstream
bench-overhead: venv bench-venv bench-tools
	$(VENV)/bin/switchyard bench overhead

## bench-engine: the in-process engine vs vLLM's own server, same model and load
## (plain chat, strict json_schema answers and forced tool calls, then /v1/responses)
bench-engine: model
	$(VENV)/bin/switchyard bench engine
	$(VENV)/bin/switchyard bench engine --shape structured
	$(VENV)/bin/switchyard bench engine --shape responses
	@echo ">>> CPU per streamed token of the same two servers: make bench-frontend"

## bench-frontend: CPU per streamed token in the serving process (the engine core
## excluded), the in-process engine vs `vllm serve`, driven by `vllm bench serve`; with
## py-spy's breakdown of both processes
.PHONY: bench-frontend
bench-frontend: model
	$(VENV)/bin/switchyard bench frontend --profile

## bench-embeddings: /v1/embeddings requests/s (batches of 32 short texts), the in-process
## engine's pooling runner vs `vllm serve --runner pooling`, same model and load
bench-embeddings: model
	$(VENV)/bin/switchyard bench embeddings

## bench-adapters: tokens/s over 1, 2 and 4 adapters as ratios to base-only traffic
bench-adapters: model
	$(VENV)/bin/switchyard bench adapters

## bench-routing: adapter_affinity vs round_robin on two vLLM replicas; gateway-added latency
bench-routing: model
	$(VENV)/bin/switchyard bench routing

## bench-resume: streams whose replica is killed, resumed on the other (resume on vs off)
bench-resume: model
	$(VENV)/bin/switchyard bench resume $(BENCH_ARGS)

## bench-metrics: requests/s through the gateway with metrics on vs off (scripted engine)
bench-metrics: venv
	$(VENV)/bin/switchyard bench metrics

## bench-cache: cache hit vs miss latency on the demo model, memory and Redis stores
bench-cache: model system-deps
	$(VENV)/bin/switchyard bench cache

## bench-auth: requests/s with API keys and rate limits (memory, Redis) vs auth off
bench-auth: venv system-deps
	$(VENV)/bin/switchyard bench auth

## bench-workers: requests/s through `switchyard serve --workers 2` vs `--workers 1`
## (non-streamed and streamed, alternating rounds); nginx answers as the scripted
## upstream and wrk sends the load, so both cost little beside the gateway
.PHONY: bench-workers bench-tools
bench-workers: venv bench-tools
	$(VENV)/bin/switchyard bench workers

bench-tools:
	@scripts/system-deps.sh wrk=wrk nginx=nginx-light

## deploy-test: the CPU compose stack (deploy/docker-compose.cpu.yml) run for real in
## containers with podman: scripts/containers.sh sets podman up and builds the images on
## a Debian base made here, then the slim gateway, a CPU `vllm serve`, Redis and
## Prometheus come up on loopback, serve one chat completion and are removed
.PHONY: deploy-test
deploy-test: model
	@scripts/containers.sh
	@# The containers run as uid 10001; a model built before switchyard-build made its
	@# files 0644 has its weights 0600 (root's).
	@chmod -R a+rX $(MODEL)
	SWITCHYARD_DEPLOY_TEST=1 $(PY) -m pytest -s tests/deploy/test_compose_stack.py $(PYTEST_ARGS)
