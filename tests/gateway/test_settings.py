from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from engines.registry import build_engine
from gateway.settings import SettingsFileError, load_settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

YAML = """
port: 9001
log_level: warning
engines:
  - name: a
    kind: scripted
    model_id: m
    options: {reply: hi}
"""


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML)
    settings = load_settings(path)
    assert settings.port == 9001
    assert settings.engines[0].options == {"reply": "hi"}
    monkeypatch.setenv("SWITCHYARD_PORT", "9002")
    monkeypatch.setenv("SWITCHYARD_LOG_LEVEL", "debug")
    assert load_settings(path).port == 9002
    assert load_settings(path, port=9003, log_level=None).port == 9003
    assert load_settings(path, port=9003).log_level == "debug"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML)
    monkeypatch.setenv("SWITCHYARD_CONFIG", str(path))
    assert load_settings().port == 9001


def test_engines_as_json_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_ENGINES", '[{"name": "e", "kind": "scripted", "model_id": "x"}]')
    assert load_settings().engines[0].model_id == "x"


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("prot: 9000\n")
    with pytest.raises(pydantic.ValidationError, match="prot"):
        load_settings(path)
    path.write_text("port: -1\n")
    with pytest.raises(pydantic.ValidationError, match="port"):
        load_settings(path)
    dup = "engines:\n  - {name: a, model_id: x}\n  - {name: a, model_id: y}\n"
    path.write_text(dup)
    with pytest.raises(pydantic.ValidationError, match="repeated: a"):
        load_settings(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path: Path) -> None:
    """Every config in configs/ passes the settings loader and each engine's own
    option validation (building an engine does not start it)."""
    settings = load_settings(path)
    assert settings.engines
    for engine in settings.engines:
        built = build_engine(engine.kind, engine.name, engine.model_id, engine.options)
        assert built.model_id == engine.model_id
