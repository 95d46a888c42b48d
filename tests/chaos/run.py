"""One chaos run: the cluster, the seeded load and faults side by side, then every
invariant, and a report (printed, and written as chaos.json / chaos.md by `make
chaos`). A failing seed replays: `python -m tests.chaos --seed N --duration S`."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos import invariants
from tests.chaos.cluster import PROBE, Cluster, cluster
from tests.chaos.faults import Faults
from tests.chaos.invariants import Check
from tests.chaos.load import Record, run_load
from tests.replicas import Replica
from tests.servers import resumes


@dataclass
class Report:
    seed: int
    duration_s: float
    records: list[Record]
    faults: Faults
    checks: list[Check]
    recovery_s: float
    resumes: dict[str, int]  # switchyard_resumes_total by result, both gateways

    @property
    def violations(self) -> int:
        return sum(len(c.violations) for c in self.checks)

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.records if not r.left and not r.hung]
        during = [r for r in done if r.status == 200 and self.faults.during(r.sent)]
        calm = [r for r in done if r.status == 200 and self.faults.calm_at(r.sent)]
        return {
            "seed": self.seed,
            "duration_s": round(self.duration_s, 1),
            "sent": len(self.records),
            "completed": sum(r.complete for r in self.records),
            "left_by_client": sum(r.left for r in self.records),
            "failed_by_status": dict(
                Counter(str(r.status) for r in done if not r.complete and r.status != 200)
            ),
            "error_events": sum(r.status == 200 and r.error is not None for r in done),
            "cache_hits": sum(r.cache == "hit" for r in done),
            "resumes": self.resumes,
            "faults": dict(Counter(f.kind for f in self.faults.log)),
            "violations": self.violations,
            "violations_by_invariant": {c.name: len(c.violations) for c in self.checks},
            "p99_ms_during_faults": _p99(during),
            "p99_ms_without_faults": _p99(calm),  # the calm stretch before the faults
            "calm_s": round(self.faults.calm[1] - self.faults.calm[0], 1),
            "recovery_s": round(self.recovery_s, 2),
            "restart_to_routable_s": [round(t, 2) for t in self.faults.back_after_s],
        }

    def dump(self, path: Path) -> None:
        """Every record and fault, a JSON line each (times relative to the first
        request), to read a failing run."""
        t0 = min((r.sent for r in self.records), default=0.0)
        with path.open("w") as out:
            for f in self.faults.log:
                span = {"start": round(f.start - t0, 2), "end": round(f.end - t0, 2)}
                out.write(json.dumps({"fault": f.kind, "target": f.target, **span}) + "\n")
            for r in self.records:
                row = {k: v for k, v in vars(r).items() if k not in ("key", "ids")}
                for k in ("sent", "first_byte", "ended"):
                    row[k] = None if row[k] is None else round(row[k] - t0, 2)
                out.write(json.dumps({**row, "key": r.key.label, "ids": sorted(r.ids)}) + "\n")

    def markdown(self) -> str:
        s = self.summary()
        lines = [
            f"# Chaos run (seed {s['seed']}, {s['duration_s']} s of faults)",
            "",
            "| measure | value |",
            "| --- | --- |",
            *(f"| {k} | {v} |" for k, v in s.items() if k != "violations_by_invariant"),
            "",
            "| invariant | violations |",
            "| --- | --- |",
            *(f"| {c.name} | {len(c.violations)} |" for c in self.checks),
        ]
        for check in self.checks:
            lines += [f"- {check.name}: {v}" for v in check.violations[:10]]
        return "\n".join(lines) + "\n"


def _p99(records: list[Record]) -> float | None:
    times = [(r.ended - r.sent) * 1000 for r in records]
    if len(times) < 2:
        return None
    return round(statistics.quantiles(times, n=100)[98], 1)


def chaos(replicas: list[Replica], work: Path, seed: int, duration_s: float) -> Report:
    with cluster(replicas, work) as c:
        faults = Faults(c, seed, duration_s)
        thread = threading.Thread(target=faults.run, name="faults")
        thread.start()
        records = asyncio.run(run_load(c.gateways, seed, thread.is_alive, faults.booting.is_set))
        thread.join()
        return _check(c, faults, records, seed, duration_s)


def _check(c: Cluster, faults: Faults, records: list[Record], seed: int, duration: float) -> Report:
    checks = [Check(f.__name__, f(records)) for f in invariants.RECORD_CHECKS]
    checks.append(Check("faults_injected_and_undone", faults.errors))
    timeout = 2 * PROBE["probe_interval_s"]
    late, recovery_s = invariants.recovered(c, faults.adapters, timeout=max(timeout, 60))
    if recovery_s > timeout:
        late.insert(0, f"routable with its adapters after {recovery_s:.1f} s (> {timeout:g} s)")
    checks.append(Check("replicas_routable_again", late))
    checks.append(Check("no_orphan_generations", invariants.no_orphans(c, timeout=15)))
    return Report(seed, duration, records, faults, checks, recovery_s, _resumes(c.gateways))


def _resumes(gateways: list[str]) -> dict[str, int]:
    """How the cut streams went, from the gateways' own counter: shows that
    cut_streams_resume had streams to judge."""
    out: Counter[str] = Counter()
    for url in gateways:
        out.update(resumes(url))  # keeps the zeros: the report lists every result
    return dict(out)
