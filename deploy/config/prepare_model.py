"""The compose stack's one-shot model preparation: make /models/served the model that
`MODEL` names, so the engines start offline (HF_HUB_OFFLINE=1) on exactly that.

- `MODEL` a Hugging Face id: the snapshot at `MODEL_REVISION` (a 40-hex commit, the
  pin) is downloaded once into /models/hub/<org>--<name>@<revision> (HF_TOKEN for gated
  models), and /models/served points to it. A second run finds it and downloads nothing.
- `MODEL` an absolute path (/models/..., /artifacts/...: the `build` profile's output):
  it must hold a config.json; /models/served points to it. MODEL_REVISION is not read.

It also hands the volume roots named in OWNED_DIRS (spaces between) to uid 10001, the
gateway's and builder's user: a named volume first mounted by a root image is root's.

Exit status 0 only when /models/served is ready: the engines wait on it with
`depends_on: {condition: service_completed_successfully}`. Runs in the vLLM image
(huggingface_hub is there).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

MODELS = Path(os.environ.get("MODELS_DIR", "/models"))
SERVED = MODELS / "served"
APP_UID = 10001  # USER in deploy/docker/Dockerfile.{gateway,slim,cpu,builder}


def point_served_at(target: Path) -> None:
    link = SERVED.with_name(".served.new")
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    link.replace(SERVED)  # atomic: an engine never sees a half-made link


def main() -> int:
    model = os.environ.get("MODEL", "")
    if not model:
        print("prepare_model: MODEL is not set (deploy/.env)", file=sys.stderr)
        return 2
    if model.startswith("/"):
        target = Path(model)
        if not (target / "config.json").is_file():
            print(f"prepare_model: {target} holds no config.json", file=sys.stderr)
            return 1
    else:
        revision = os.environ.get("MODEL_REVISION", "")
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            print(
                f"prepare_model: MODEL_REVISION={revision!r} is not a commit: pin {model} to "
                "the 40-hex commit from its hub page (Files and versions) in deploy/.env",
                file=sys.stderr,
            )
            return 2
        target = MODELS / "hub" / f"{model.replace('/', '--')}@{revision}"
        done = target / ".complete"
        if not done.is_file():
            from huggingface_hub import snapshot_download

            print(f"prepare_model: downloading {model}@{revision} to {target}", flush=True)
            snapshot_download(
                model, revision=revision, local_dir=target, token=os.environ.get("HF_TOKEN") or None
            )
            done.write_text(f"{model}@{revision}\n")
    point_served_at(target)
    for directory in os.environ.get("OWNED_DIRS", "").split():
        if os.path.isdir(directory) and os.stat(directory).st_uid != APP_UID:
            os.chown(directory, APP_UID, -1)
    print(f"prepare_model: {SERVED} -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
