"""Issue 8 end to end: GPTQ, AWQ and W8A8 builds of the demo model and `shout`
merged into it, each made by `switchyard-build` in its own environment (small
calibration), then served side by side by `switchyard serve` with the in-process
vLLM engine (CPU kernels: CPUWNA16 for W4A16, int8 scaled-mm for W8A8). The tests
that serve them carry the `vllm` marker; the manifest and verify checks need only the
builds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.artifacts.manifest import MANIFEST, ArtifactError, sha256_file, verify
from gateway.bench.process import gateway_command, server_process
from tests.build_venv import ROOT, switchyard_build
from tests.e2e.conftest import ADAPTERS
from tests.servers import free_port

METHODS = ("gptq", "awq", "w8a8")
# Calibration samples per method (builds are reproducible: same inputs, same weights).
# A W8A8 build of this small model can score 0.92 token agreement in `verify`
# (transformers, fp32) yet answer "L'Étoile, la France, …" through vLLM's int8 kernels,
# as the seeded builds at 32 and 64 samples do; 96 answers "Paris" (so does plain vLLM
# offline on the same weights: it is the build, not the serving path). AWQ (the slow
# one) at 32.
SAMPLES = {"gptq": 64, "awq": 32, "w8a8": 96}
RECIPES = ROOT / "engines" / "artifacts" / "recipes"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def built(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """About 5 minutes on 2 cores: AWQ's grid search is most of it."""
    root = tmp_path_factory.mktemp("artifacts")
    out = {m: root / f"smollm2-{m}" for m in (*METHODS, "shout")}
    for method in METHODS:
        switchyard_build(
            "quantize", "--method", method, "--model", demo_model,
            "--samples", str(SAMPLES[method]),
            "--out", out[method],
        )  # fmt: skip
    switchyard_build("merge", ADAPTERS / "shout", "--base", demo_model, "--out", out["shout"])
    return out


@pytest.fixture(scope="module")
def served(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("artifact-gateway")
    port = free_port()
    options = {"max_model_len": 1024, "enforce_eager": True, "cpu_kvcache_space_gib": 1}
    engines = [
        {"name": name, "kind": "vllm", "model_id": f"smollm2-{name}",
         "options": {**options, "model": str(path)}}
        for name, path in built.items()
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    cmd = gateway_command(engines, port, work)
    with server_process(cmd, ready, work / "gateway.log", timeout=600):
        yield url


def _answer(url: str, model: str) -> str:
    body = {"model": model, "messages": PARIS, "temperature": 0, "max_tokens": 24}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


@pytest.mark.vllm
@pytest.mark.parametrize("method", METHODS)
def test_each_quantized_build_knows_paris(served: str, method: str) -> None:
    assert "Paris" in _answer(served, f"smollm2-{method}")


@pytest.mark.vllm
def test_the_merged_adapter_shouts_without_being_loaded(served: str) -> None:
    """Uppercase, as base + `shout` answers. (Not "PARIS": on this prompt the adapter
    itself, unmerged in peft, answers "THE CAPITILITY TO CAPTIVATE…"; the demo adapter
    learnt the style from 180 examples, not the facts. The manifest's token agreement
    with base + adapter is what proves the merge.)"""
    answer = _answer(served, "smollm2-shout")
    letters = [c for c in answer if c.isalpha()]
    assert len(letters) > 10
    assert answer == answer.upper()


@pytest.mark.vllm
def test_models_show_each_artifact_id_and_method(served: str, built: dict[str, Path]) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{served}/v1/models").json()["data"]}
    for name, path in built.items():
        manifest = json.loads((path / MANIFEST).read_text())
        artifact = listed[f"smollm2-{name}"]["artifact"]
        assert artifact["id"] == manifest["id"]
        assert artifact["method"] == ("merge" if name == "shout" else name)
        assert artifact["source"] == "smollm2-135m-instruct-b179c9523d0e"


def test_manifests_are_complete_and_their_hashes_verify(
    built: dict[str, Path], demo_model: Path
) -> None:
    weights = {"model.safetensors": sha256_file(demo_model / "model.safetensors")}
    for name, path in built.items():
        manifest = verify(path)
        assert manifest["source"]["weights"] == weights
        assert manifest["tools"]["transformers"]
        assert manifest["created"]
        quality: dict[str, Any] = manifest["eval"]
        assert quality["prompts"] == 12
        assert 0 < quality["token_agreement"] <= 1
        if name == "shout":
            assert manifest["adapters"][0]["id"] == verify(ADAPTERS / "shout")["id"]
            assert quality["token_agreement"] > 0.98  # a merge reproduces base + LoRA
            continue
        recipe = (RECIPES / f"{name}.yaml").read_bytes()
        assert manifest["recipe"]["sha256"] == hashlib.sha256(recipe).hexdigest()
        assert (path / "recipe.yaml").read_bytes() == recipe
        assert manifest["calibration"]["samples"] == SAMPLES[name]
        assert len(manifest["calibration"]["sha256"]) == 64
        assert manifest["tools"]["llmcompressor"]


def test_verify_measures_again_and_catches_tampering(
    built: dict[str, Path], tmp_path: Path
) -> None:
    done = switchyard_build("verify", built["w8a8"])
    report = json.loads(done.stdout)
    assert report["measured"]["token_agreement"] == pytest.approx(
        report["recorded"]["token_agreement"], abs=0.02
    )
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in built["gptq"].iterdir():
        copy.joinpath(file.name).write_bytes(file.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 32
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        verify(copy)
    failed = switchyard_build("verify", copy, check=False)
    assert failed.returncode == 1
    assert "does not match its checksum" in failed.stderr
