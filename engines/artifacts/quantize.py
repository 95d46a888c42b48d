"""`switchyard-build quantize`: GPTQ, AWQ or W8A8 with llm-compressor's `oneshot`.

Recipes are YAML files in `recipes/` (one per method, or `--recipe FILE`). Before
any model is loaded, the recipe's group sizes are checked against every layer it
quantizes (on the meta device), so a group size that does not divide a layer's input
width is a clear error, not a crash minutes into calibration. The artifact is
written compressed (vLLM loads it without a `quantization=` argument), then loaded
back and compared with its source (`evaluate.py`) before its manifest is written.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from engines.artifacts import calibration, evaluate
from engines.artifacts.manifest import (
    ArtifactError,
    atomic_directory,
    check_writable,
    require_model,
    source_record,
    tool_versions,
    write_manifest,
)

RECIPES = Path(__file__).resolve().parent / "recipes"
METHODS = ("gptq", "awq", "w8a8")
TOOLS = ("llmcompressor", "compressed-tensors", "transformers", "torch", "switchyard")


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    text: str

    @classmethod
    def load(cls, method: str, path: Path | None) -> Recipe:
        path = path or RECIPES / f"{method}.yaml"
        if not path.is_file():
            raise ArtifactError(f"recipe {path} does not exist.")
        return cls(path.name, path.read_text())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def weight_groups(self) -> list[tuple[int, list[str], list[str]]]:
        """(group size, targets, ignore) of every grouped weight scheme in the recipe."""
        from compressed_tensors.quantization import preset_name_to_scheme

        found = []
        for modifier in _modifiers(yaml.safe_load(self.text)):
            ignore = list(modifier.get("ignore", []))
            schemes = []
            if isinstance(modifier.get("scheme"), str):
                targets = _as_list(modifier.get("targets", ["Linear"]))
                schemes.append(
                    (preset_name_to_scheme(modifier["scheme"], targets).weights, targets)
                )
            for group in (modifier.get("config_groups") or {}).values():
                schemes.append((group.get("weights"), _as_list(group.get("targets", []))))
            for weights, targets in schemes:
                size = _get(weights, "group_size")
                if size and _get(weights, "strategy") in ("group", "tensor_group"):
                    found.append((int(size), targets, ignore))
        return found


def check_dimensions(model_dir: Path, recipe: Recipe) -> None:
    """Every layer a grouped scheme quantizes needs group size | input width."""
    import torch
    from compressed_tensors.utils import match_named_modules
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    for size, targets, ignore in recipe.weight_groups():
        widths = {n: m.in_features for n, m in match_named_modules(model, targets, ignore)}
        bad = {n: w for n, w in widths.items() if w % size}
        if bad:
            divisor = math.gcd(*widths.values())
            fits = [g for g in (256, 128, 64, 32, 16) if divisor % g == 0 and g < size]
            name, width = next(iter(bad.items()))
            raise ArtifactError(
                f"recipe {recipe.name}: group_size {size} does not divide the input width of "
                f"{len(bad)} layers of {model_dir.name} (e.g. {name}: {width}). "
                f"Input widths here: {sorted(set(widths.values()))}; "
                + (f"use group_size {fits[0]}." if fits else "use a per-channel scheme.")
            )


def quantize(
    source: Path,
    method: str,
    out: Path,
    *,
    recipe_path: Path | None = None,
    calibration_path: Path | None = None,
    samples: int = 64,
    max_seq_length: int = 512,
) -> dict[str, Any]:
    require_model(source)
    check_writable(out)
    recipe = Recipe.load(method, recipe_path)
    check_dimensions(source, recipe)

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _no_pinned_memory_without_accelerator()
    steps = tqdm(total=4, desc=f"Quantizing {source.name} ({method})", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = calibration.load(calibration_path, tokenizer, samples)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    steps.update()
    encoded = tokenizer(
        data.texts, add_special_tokens=False, truncation=True, max_length=max_seq_length
    )
    started = time.monotonic()
    torch.manual_seed(0)
    oneshot(
        model=model,
        dataset=Dataset.from_dict(dict(encoded)),
        recipe=recipe.text,
        num_calibration_samples=len(data.texts),
        max_seq_length=max_seq_length,
        # Reproducible builds: llm-compressor shuffles calibration samples by default
        # (unseeded), so two builds from the same inputs differed, and on this small
        # model one W8A8 build answered well through vLLM's int8 kernels, another not.
        shuffle_calibration_samples=False,
    )
    seconds = time.monotonic() - started
    steps.update()
    origin = source_record(source)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, save_compressed=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(recipe.text)
        del model
        steps.update()
        quality = evaluate.compare(
            evaluate.load(tmp), evaluate.load(source), tokenizer, f"{method} vs {source.name}"
        )
        inputs = f"{origin['weights']}{recipe.sha256}{data.sha256}".encode()
        manifest = write_manifest(
            tmp,
            kind="quantize",
            id=f"{out.name}-{hashlib.sha256(inputs).hexdigest()[:12]}",
            method=method,
            recipe={"name": recipe.name, "sha256": recipe.sha256},
            source=origin,
            calibration=data.record(max_seq_length),
            seconds=round(seconds, 1),
            eval=quality,
            tools=tool_versions(*TOOLS),
        )
        steps.update()
    steps.close()
    return manifest


def _no_pinned_memory_without_accelerator() -> None:
    """llm-compressor's AWQ pins cached activations for faster host-to-device copies;
    with no accelerator, `Tensor.pin_memory` raises "Cannot access accelerator
    device". Pinning only speeds up copies, so without an accelerator, skip it."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def _modifiers(node: Any) -> list[dict[str, Any]]:
    """Every modifier's arguments in a recipe (stage → group → ModifierName → args)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("Modifier") and isinstance(value, dict):
                found.append(value)
            else:
                found.extend(_modifiers(value))
    return found


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _get(obj: Any, key: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return getattr(value, "value", value)  # enums → their string
