"""An adapter's files, and what they fit: the checks a LoRA directory passes before any
engine loads it (`inspect`), its content digest, the content-addressed copy runtime
loads are taken from (`stored`), and the names a base model answers to as an
adapter's base (`identities`, from an artifact's manifest). The registry that loads
them is gateway/adapters.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts.manifest import read_manifest
from engines.types import AdapterSupport
from gateway.errors import InvalidRequest

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # loading may run code
STORE = ".switchyard-store"


class AdapterRejected(InvalidRequest):
    code = "invalid_adapter"


def inspect(
    path: Path, root: Path | None, support: AdapterSupport, base_ids: frozenset[str]
) -> tuple[Path, str]:
    """Check an adapter directory without loading it; return where it really is and
    its content digest (sha256 over its files' names and bytes)."""
    if root is not None:
        real_root = root.resolve()
        if not path.resolve().is_relative_to(real_root):
            raise AdapterRejected(
                f"'{path}' is outside the adapter root; put adapters under the configured "
                "adapter_root.",
                param="path",
            )
    if not path.is_dir():
        raise AdapterRejected(f"No adapter directory at '{path}'.", param="path")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if root is not None:
        escaping = [p.name for p in files if not p.resolve().is_relative_to(real_root)]
        if escaping:
            raise AdapterRejected(
                f"Files in '{path}' link outside the adapter root: {', '.join(escaping)}.",
                param="path",
            )
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterRejected(f"'{path}' has no {ADAPTER_CONFIG}.", param="path")
    pickles = [p.name for p in files if p.suffix in PICKLES]
    if pickles:
        raise AdapterRejected(
            f"'{path}' holds pickled weights ({', '.join(pickles)}), which can run code when "
            f"loaded; save the adapter as safetensors (peft's default) in {WEIGHTS}.",
            param="path",
        )
    if not (path / WEIGHTS).is_file():
        raise AdapterRejected(f"'{path}' has no adapter weights ({WEIGHTS}).", param="path")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as exc:
        raise AdapterRejected(f"{ADAPTER_CONFIG} is not valid JSON: {exc}", param="path") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterRejected(
            f"Only LoRA adapters are served; this one is {config.get('peft_type')!r}.",
            param="path",
        )
    base = str(config.get("base_model_name_or_path") or "")
    if base not in base_ids and Path(base).name not in base_ids:
        raise AdapterRejected(
            f"The adapter was trained for '{base}', not for this base model "
            f"(one of: {', '.join(sorted(base_ids))}).",
            param="path",
        )
    rank = int(config.get("r", 0))
    if not 0 < rank <= support.max_rank:
        raise AdapterRejected(
            f"The adapter's rank {rank} is over this engine's max_lora_rank "
            f"{support.max_rank}; raise max_lora_rank or use a smaller adapter.",
            param="path",
        )
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise AdapterRejected(
            "target_modules given as a pattern is not supported; list the modules.",
            param="path",
        )
    unsupported = sorted(set(targets) - support.target_modules)
    if unsupported:
        raise AdapterRejected(
            f"The adapter targets modules this engine cannot adapt: {', '.join(unsupported)}.",
            param="path",
        )
    return path.resolve(), content_digest(path)


def content_digest(path: Path) -> str:
    """sha256 over an adapter directory's files' names and bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def stored(path: Path, root: Path) -> Path:
    """`path` (under `root`) copied into `root/STORE/<sha256>`: what is validated and
    loaded from then on. Links are followed only to files inside `root`, checked as
    each is copied; a copy already there (the same content) is reused. What is not
    under `root` is left for `inspect` to refuse."""
    real_root = root.resolve()
    inside = path.resolve().is_relative_to(real_root) and path.is_dir()
    if not inside or any(not f.resolve().is_relative_to(real_root) for f in path.rglob("*")):
        return path

    def copy(source: str, target: str) -> None:
        if not Path(source).resolve().is_relative_to(real_root):  # swapped since
            raise AdapterRejected(f"'{source}' links outside the adapter root.", param="path")
        shutil.copyfile(source, target)

    store = real_root / STORE
    store.mkdir(exist_ok=True)
    incoming = Path(tempfile.mkdtemp(dir=store, prefix=".incoming-"))
    incoming.chmod(0o755)  # as a directory copied by hand: engines run as other users
    try:
        shutil.copytree(path, incoming, copy_function=copy, dirs_exist_ok=True)
        final = store / content_digest(incoming)
        if final.is_dir():
            shutil.rmtree(incoming)
        else:
            incoming.rename(final)
        return final
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


@dataclass(frozen=True, slots=True)
class Artifact:
    """What a model directory built by `switchyard-build` says it is (its manifest,
    `switchyard-artifact.json`): the id the cache keys on, the kind of build
    (import-gguf, merge, quantize) and its method (gptq, awq, w8a8, merge, or the
    dtype of an imported model), and the artifact it was derived from."""

    id: str
    kind: str | None = None
    method: str | None = None
    source: str | None = None

    @classmethod
    def read(cls, model_path: str) -> Artifact | None:
        data = read_manifest(Path(model_path))
        if not data or not data.get("id"):
            return None
        return cls(
            str(data["id"]),
            data.get("kind"),
            data.get("method") or data.get("dtype"),
            (data.get("source") or {}).get("id"),
        )

    def describe(self) -> dict[str, str | None]:
        return {"id": self.id, "kind": self.kind, "method": self.method, "source": self.source}


def identities(model_id: str, model_path: str | None) -> frozenset[str]:
    """The names an adapter may give for this base: its model id, its directory's
    name and, for artifacts built here, the manifest id and the id of the artifact it
    was derived from (an adapter trained on a model also fits its quantized builds)."""
    names = {model_id}
    if model_path:
        names.add(Path(model_path).name)
        artifact = Artifact.read(model_path)
        if artifact:
            names |= {artifact.id, artifact.source or ""}
    names.discard("")
    return frozenset(names)
