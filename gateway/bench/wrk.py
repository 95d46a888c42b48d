"""wrk, the native load generator the benchmarks drive when the client's own CPU must
not count against the server on a machine of few cores: a closed loop of one POST for
some seconds, read back from wrk's report."""

from __future__ import annotations

import re
import resource
import subprocess
import tempfile
import time
from typing import Any

import orjson

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run(
    url: str,
    body: dict[str, Any],
    seconds: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST `body` to `url` over `concurrency` connections for `seconds`: requests/s of
    the answers with status 200, the failures (other statuses, socket errors), the
    latency p50 and p99 in ms, and wrk's CPU seconds."""
    lines = ["wrk.method = 'POST'", f"wrk.body = '{orjson.dumps(body).decode()}'"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(f"wrk.headers['{name}'] = '{value}'")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write("\n".join(lines) + "\n")
        script.flush()
        command = [
            "wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s",
            "--latency", "-s", script.name, url,
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = int(_field(r"(\d+) requests in", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = int(_field(r"Non-2xx or 3xx responses: (\d+)", out, "0"))
    failures += sum(int(n) for n in errors.groups()) if errors else 0
    return {
        "rps": round((requests - failures) / float(_field(r"requests in ([\d.]+)s", out)), 1),
        "requests": requests,
        "failures": failures,
        "wall_s": round(wall, 3),
        "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "p50_ms": _latency("50", out),
        "p99_ms": _latency("99", out),
    }


def _latency(percent: str, report: str) -> float:
    value, unit = re.findall(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)$", report, re.M)[0]
    return round(float(value) * _UNITS[unit], 3)


def _field(pattern: str, text: str, default: str | None = None) -> str:
    found = re.search(pattern, text)
    if found is None:
        if default is None:
            raise RuntimeError(f"wrk's report has no {pattern!r}:\n{text}")
        return default
    return found.group(1)
