"""The adapter registry on the scripted engine: validation, identity, draining."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway.adapter_files import AdapterRejected, Artifact, content_digest, identities, inspect
from gateway.app import create_app
from gateway.settings import EngineSettings, Settings
from tests.gateway.conftest import scripted
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH

SUPPORT = scripted().adapter_support
assert SUPPORT is not None


def make_adapter(path: Path, *, base: str = "scripted", rank: int = 8, **config: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": base,
                "r": rank,
                "target_modules": ["q_proj", "v_proj"],
                **config,
            }
        )
    )
    (path / "adapter_model.safetensors").write_bytes(b"weights of " + path.name.encode())
    return path


def test_inspect_accepts_a_good_adapter_and_digests_its_files(tmp_path: Path) -> None:
    path = make_adapter(tmp_path / "good")
    real, digest = inspect(path, tmp_path, SUPPORT, frozenset({"scripted"}))
    assert real == path.resolve()
    assert inspect(path, tmp_path, SUPPORT, frozenset({"scripted"}))[1] == digest
    (path / "adapter_model.safetensors").write_bytes(b"other weights")
    assert inspect(path, tmp_path, SUPPORT, frozenset({"scripted"}))[1] != digest


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"base": "another-model"}, "trained for 'another-model'"),
        ({"rank": 64}, "max_lora_rank"),
        ({"target_modules": ["lm_head"]}, "lm_head"),
        ({"target_modules": ".*proj"}, "pattern"),
        ({"peft_type": "IA3"}, "Only LoRA"),
    ],
)
def test_inspect_rejects_with_the_reason(
    tmp_path: Path, config: dict[str, object], reason: str
) -> None:
    path = make_adapter(tmp_path / "bad", **config)  # type: ignore[arg-type]
    with pytest.raises(AdapterRejected, match=reason):
        inspect(path, tmp_path, SUPPORT, frozenset({"scripted"}))


def test_inspect_keeps_loads_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = make_adapter(tmp_path / "outside")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    for path in (outside, root / "link", root / ".." / "outside"):
        with pytest.raises(AdapterRejected, match="outside the adapter root"):
            inspect(path, root, SUPPORT, frozenset({"scripted"}))


def test_base_identities_include_the_manifest_id(tmp_path: Path) -> None:
    (tmp_path / "switchyard-artifact.json").write_text(json.dumps({"id": "demo-123"}))
    assert identities("served-name", str(tmp_path)) == {"served-name", tmp_path.name, "demo-123"}


def test_a_quantized_build_takes_adapters_made_for_its_source(tmp_path: Path) -> None:
    manifest = {"id": "demo-gptq-1", "kind": "quantize", "method": "gptq",
                "source": {"id": "demo-123", "path": "models/demo"}}  # fmt: skip
    (tmp_path / "switchyard-artifact.json").write_text(json.dumps(manifest))
    assert {"demo-gptq-1", "demo-123"} <= identities("served", str(tmp_path))
    artifact = Artifact.read(str(tmp_path))
    assert artifact is not None
    assert artifact.describe() == {
        "id": "demo-gptq-1", "kind": "quantize", "method": "gptq", "source": "demo-123"
    }  # fmt: skip
    imported = {"id": "demo-123", "kind": "import-gguf", "dtype": "bfloat16"}
    (tmp_path / "switchyard-artifact.json").write_text(json.dumps(imported))
    assert Artifact.read(str(tmp_path)) == Artifact("demo-123", "import-gguf", "bfloat16")
    assert Artifact.read(str(tmp_path / "missing")) is None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_adapter(tmp_path / "a")
    make_adapter(tmp_path / "b")
    return tmp_path


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted(reply="one two three four five six", token_delay_s=0.05)


@pytest.fixture
def url(root: Path, engine: ScriptedEngine) -> object:
    settings = Settings(
        engines=[
            EngineSettings(name="scripted", kind="scripted", model_id="scripted", adapter_root=root)
        ],
        auth=NO_AUTH,
    )
    app = create_app(settings, engines=[engine])
    with serve(app) as base_url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield base_url


def chat(url: object, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_adapter_lifecycle_through_the_api(url: object, engine: ScriptedEngine) -> None:
    r = httpx.post(f"{url}/v1/adapters", json={"name": "a", "path": "a"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["state"] == "ready"
    assert chat(url, "a").json()["choices"][0]["message"]["content"].startswith("[a]")
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert {"id": "a", "parent": "scripted"}.items() <= models[1].items()
    # Same files: same identity. Other files under the same name: a fresh lora id.
    assert httpx.post(f"{url}/v1/adapters", json={"name": "a", "path": "a"}).json() == first
    second = httpx.post(f"{url}/v1/adapters", json={"name": "a", "path": "b"}).json()
    assert second["digest"] != first["digest"]
    assert second["lora_id"] != first["lora_id"]
    assert wait_until(
        lambda: first["lora_id"] not in {a.engine_id for a in engine.adapters.values()}, 5
    )
    assert httpx.delete(f"{url}/v1/adapters/a").json()["deleted"] is True
    assert chat(url, "a").status_code == 404
    assert httpx.delete(f"{url}/v1/adapters/a").status_code == 404
    assert engine.adapters == {}


def test_bad_loads_get_400(url: object) -> None:
    for body in (
        {"name": "x", "path": "missing"},
        {"name": "x", "path": "/etc"},
        {"name": "scripted", "path": "a"},
        {"name": "x"},
    ):
        r = httpx.post(f"{url}/v1/adapters", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_unload_waits_for_in_flight_requests(url: object, engine: ScriptedEngine) -> None:
    httpx.post(f"{url}/v1/adapters", json={"name": "a", "path": "a"})
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines)
        with httpx.Client(base_url=str(url)) as other:
            done: list[int] = []
            t = threading.Thread(
                target=lambda: done.append(other.delete("/v1/adapters/a").status_code)
            )
            t.start()
            assert wait_until(
                lambda: httpx.get(f"{url}/v1/adapters").json()["data"][0]["state"] == "draining", 5
            )
            assert chat(url, "a").status_code == 404
            assert not done
            rest = list(lines)
            t.join(5)
    assert "data: [DONE]" in rest
    assert done == [200]


def test_what_was_checked_is_what_loads(url: object, root: Path, engine: ScriptedEngine) -> None:
    """A runtime load is copied into the store under its digest; the engine loads the
    copy, so the source changing after the check (or after the load) changes nothing."""
    first = httpx.post(f"{url}/v1/adapters", json={"name": "a", "path": "a"}).json()
    (loaded,) = engine.adapters.values()
    copy = Path(loaded.path)
    assert copy == (root / ".switchyard-store" / first["digest"]).resolve()
    (root / "a" / "adapter_model.safetensors").write_bytes(b"swapped after the check")
    assert content_digest(copy) == first["digest"]
    assert chat(url, "a").status_code == 200


@pytest.mark.parametrize(
    ("name", "files", "reason"),
    [
        ("../x", {}, "cannot name an adapter"),
        ("a b", {}, "cannot name an adapter"),
        ("x" * 65, {}, "cannot name an adapter"),
        ("p", {"adapter_model.bin": b"pickle"}, "pickled weights"),
        ("p", {"extra/optimizer.pt": b"pickle"}, "pickled weights"),
    ],
)
def test_names_are_plain_and_weights_safetensors(
    url: object, root: Path, name: str, files: dict[str, bytes], reason: str
) -> None:
    path = make_adapter(root / "p")
    for relative, data in files.items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_bytes(data)
    r = httpx.post(f"{url}/v1/adapters", json={"name": name, "path": "p"})
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]["message"]


def test_a_rejected_copy_is_not_kept(url: object, root: Path) -> None:
    (make_adapter(root / "wrong") / "adapter_model.safetensors").unlink()
    r = httpx.post(f"{url}/v1/adapters", json={"name": "w", "path": "wrong"})
    assert r.status_code == 400
    assert str(root / "wrong") in r.json()["error"]["message"]  # the path the caller gave
    assert not [p for p in (root / ".switchyard-store").iterdir()]


def test_links_are_followed_inside_the_root_only(url: object, root: Path, tmp_path: Path) -> None:
    outside = make_adapter(tmp_path.parent / f"{tmp_path.name}-outside")
    sneaky = make_adapter(root / "sneaky")
    (sneaky / "adapter_model.safetensors").unlink()
    (sneaky / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    r = httpx.post(f"{url}/v1/adapters", json={"name": "s", "path": "sneaky"})
    assert r.status_code == 400
    assert "link outside" in r.json()["error"]["message"]
    linked = make_adapter(root / "linked")
    (linked / "adapter_model.safetensors").unlink()
    (linked / "adapter_model.safetensors").symlink_to(root / "a" / "adapter_model.safetensors")
    r = httpx.post(f"{url}/v1/adapters", json={"name": "l", "path": "linked"})
    assert r.status_code == 200, r.text  # a link inside the root: its file is copied
    assert not Path(r.json()["path"], "adapter_model.safetensors").is_symlink()


def test_copies_no_adapter_uses_are_deleted(url: object, root: Path) -> None:
    """The store keeps a copy while an adapter, ready or draining, uses it: the old
    version goes once a reload has drained it, a copy two names share with the last."""
    store = root / ".switchyard-store"

    def load(name: str, path: str) -> str:
        r = httpx.post(f"{url}/v1/adapters", json={"name": name, "path": path})
        assert r.status_code == 200, r.text
        digest: str = r.json()["digest"]
        return digest

    def kept() -> set[str]:
        return {p.name for p in store.iterdir()}

    first, twin = load("a", "a"), load("twin", "a")
    assert first == twin
    second = load("a", "b")
    assert wait_until(lambda: len(httpx.get(f"{url}/v1/adapters").json()["data"]) == 2, 5)
    assert kept() == {first, second}  # "twin" still uses the first copy
    assert httpx.delete(f"{url}/v1/adapters/twin").status_code == 200
    assert kept() == {second}
    assert httpx.delete(f"{url}/v1/adapters/a").status_code == 200
    assert kept() == set()
    assert load("a", "a") == first  # copied again from the source
    assert chat(url, "a").status_code == 200
