"""`make chaos`: a long seeded chaos run on its own replicas, its report written to
docs/benchmarks/chaos.{json,md}. `--seed` replays a run."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos.run import chaos
from tests.conftest import DEMO_MODEL
from tests.replicas import started_replicas


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 32))
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--dump", type=Path, help="write every request and fault here (JSONL)")
    args = parser.parse_args()
    print(f"chaos: seed {args.seed}, {args.duration:g} s of faults", flush=True)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    with started_replicas(DEMO_MODEL, work) as replicas:
        report = chaos(replicas, work, args.seed, args.duration)
    if args.dump:
        report.dump(args.dump)
    markdown = report.markdown()
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(report.summary(), indent=2) + "\n")
    (args.out / "chaos.md").write_text(markdown)
    print(f"replay: python -m tests.chaos --seed {args.seed} --duration {args.duration:g}")
    if report.violations:
        print(f"logs of the replicas and gateways: {work}")
        return 1
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
