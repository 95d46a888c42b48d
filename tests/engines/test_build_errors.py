"""Bad input to `switchyard-build merge|quantize` gets a clear error before any work,
and no artifact (or half of one) is left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.build_venv import switchyard_build
from tests.e2e.conftest import ADAPTERS


def _fails(*args: str | Path, out: Path) -> str:
    done = switchyard_build(*args, "--out", out, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    leftovers = list(out.parent.glob(f".{out.name}*")) if out.parent.is_dir() else []
    assert not out.exists()
    assert leftovers == []
    return done.stderr.strip().splitlines()[-1]


def test_a_missing_model(tmp_path: Path) -> None:
    error = _fails("quantize", "--method", "gptq", "--model", tmp_path / "nope", out=tmp_path / "q")
    assert "is not a model directory (no config.json)" in error
    assert "make model" in error


def test_a_group_size_that_does_not_divide_the_layer_widths(tmp_path: Path) -> None:
    recipe = tmp_path / "w4a16-g128.yaml"
    recipe.write_text(
        "quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n"
        "      ignore: [lm_head]\n      scheme: W4A16\n      targets: [Linear]\n"
    )
    error = _fails("quantize", "--method", "gptq", "--recipe", recipe, out=tmp_path / "q")
    assert "group_size 128 does not divide the input width" in error
    assert "[576, 1536]" in error
    assert "use group_size 64" in error


def test_an_adapter_whose_manifest_names_another_base(tmp_path: Path) -> None:
    adapter = tmp_path / "other"
    shutil.copytree(ADAPTERS / "shout", adapter)
    manifest = json.loads((adapter / "switchyard-artifact.json").read_text())
    manifest["base"]["id"] = "llama-3-8b-0123456789ab"
    (adapter / "switchyard-artifact.json").write_text(json.dumps(manifest))
    error = _fails("merge", adapter, out=tmp_path / "merged")
    assert "was trained on llama-3-8b-0123456789ab, not on smollm2-135m-instruct" in error


def test_an_adapter_shaped_for_another_base(tmp_path: Path) -> None:
    adapter = tmp_path / "wide"
    adapter.mkdir()
    shutil.copy(ADAPTERS / "shout" / "adapter_config.json", adapter)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(  # a 4096-wide model's q_proj, as an 8B model's adapter would have
        {
            f"{prefix}.lora_A.weight": np.zeros((8, 4096), np.float32),
            f"{prefix}.lora_B.weight": np.zeros((4096, 8), np.float32),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    error = _fails("merge", adapter, out=tmp_path / "merged")
    assert "model.layers.0.self_attn.q_proj has in_features 576, the adapter 4096" in error
    assert "trained for another base model" in error


def test_an_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    error = _fails("merge", ADAPTERS / "shout", out=blocker / "merged")
    assert f"cannot write the artifact to {blocker / 'merged'}" in error
    assert blocker.read_text() == "not a directory"
