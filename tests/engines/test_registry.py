from __future__ import annotations

import pytest

from engines.registry import EngineConfigError, build_engine
from engines.scripted import ScriptedEngine


def test_builds_by_name_with_validated_options() -> None:
    engine = build_engine("scripted", "s", "m", {"reply": "x", "token_delay_s": 0.1})
    assert isinstance(engine, ScriptedEngine)
    assert engine.config.token_delay_s == 0.1


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(EngineConfigError, match="scripted"):
        build_engine("tgi-ng", "s", "m", {})


def test_unknown_and_mistyped_options_are_refused() -> None:
    with pytest.raises(EngineConfigError, match="reply_text"):
        build_engine("scripted", "s", "m", {"reply_text": "x"})
    with pytest.raises(EngineConfigError, match="token_delay_s"):
        build_engine("scripted", "s", "m", {"token_delay_s": "slow"})
    with pytest.raises(EngineConfigError, match="model"):
        build_engine("vllm", "v", "m", {})
