"""The gateway's promises, as checks over what the clients saw (`Record`s) and over
the cluster once the faults have stopped. Each check returns its violations, one
line each; an empty list means it held."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.chaos.cluster import ADMIN, CHURNED, LIMITS, PROBE, Cluster
from tests.chaos.load import Record
from tests.replicas import Replica

# Statuses a client may get under faults, by the README: its own mistakes aside, a
# limit (429), nothing could serve it (503) or in time (504).
DOCUMENTED = {429, 503, 504}
LIMITER_DOWN = "rate limiter's store is unreachable"


@dataclass(frozen=True)
class Check:
    name: str
    violations: list[str]


def every_request_ends(records: list[Record]) -> list[str]:
    """A complete answer, or an OpenAI-shaped error with a documented status, within
    its timeouts: no 500, no hang, no stream cut without an error event."""
    out = []
    for r in records:
        where = f"#{r.index} {r.path} stream={r.stream} status={r.status}"
        if r.hung:
            out.append(f"{where}: still open after the client's deadline")
        elif r.malformed:
            out.append(f"{where}: {r.malformed}")
        elif r.left:
            continue
        elif r.status != 200 and r.status not in DOCUMENTED:
            out.append(f"{where}: undocumented status: {r.error}")
        elif r.status == 200 and r.error is None and r.finishes != 1:
            out.append(f"{where}: ended with {r.finishes} finish chunks and no error")
    return out


def nothing_lost_before_the_first_byte(records: list[Record]) -> list[str]:
    """Faults hit one replica at a time, so another could always serve: a request
    that failed before any output was lost, unless a limit refused it."""
    out = []
    for r in records:
        if r.status in (0, 200, 429) or r.left:
            continue
        message = (r.error or {}).get("error", {}).get("message", "")
        if r.key.limited and LIMITER_DOWN in message:
            continue  # on_redis_error: deny, as configured
        out.append(f"#{r.index} {r.path}: {r.status} before output: {message[:200]}")
    for r in records:
        if r.status == 200 and r.error is not None and not r.text:
            message = r.error["error"]["message"]
            out.append(f"#{r.index} {r.path}: error event before any text: {message[:200]}")
    return out


def no_duplicated_text(records: list[Record]) -> list[str]:
    """One id per answer, nothing after the finish, no more text chunks than tokens
    (a silent retry after the first byte would repeat the answer's start)."""
    out = []
    for r in records:
        if len(r.ids) > 1:
            out.append(f"#{r.index}: {len(r.ids)} ids in one answer")
        if r.after_finish:
            out.append(f"#{r.index}: {r.after_finish} text chunks after the finish")
        tokens = (r.usage or {}).get("completion_tokens")
        fresh = r.stream and r.complete and r.cache != "hit"
        if fresh and tokens is not None and r.content_chunks > tokens:
            out.append(f"#{r.index}: {r.content_chunks} text chunks for {tokens} tokens")
    return out


def cache_is_faithful(records: list[Record]) -> list[str]:
    """A hit is a complete answer that the same request got from an engine: never
    another request's, never a cut or failed generation."""
    generated: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.complete and r.cache == "miss":
            generated[r.identity].add(r.text)
    out = []
    for r in records:
        if r.cache != "hit" or r.status != 200:
            continue
        if r.error is None and r.finishes != 1:
            out.append(f"#{r.index}: a hit without its finish")
        elif r.complete and r.text not in generated[r.identity]:
            out.append(f"#{r.index}: a hit no engine gave this request: {r.text[:80]!r}")
    return out


def limits_hold(records: list[Record]) -> list[str]:
    """The limited key, across both gateways and Redis's restarts, in any span [a, b]:
    requests surely admitted inside it (sent after a, answered before b) are at most
    the bucket, its refill and one request; their tokens at most the bucket, its
    refill and what the requests in flight at once may add (tokens are charged when
    a request ends, so each one in flight may run the key into debt once)."""
    admitted = sorted(
        (r for r in records if r.key.limited and r.status == 200 and r.first_byte),
        key=lambda r: r.sent,
    )
    rpm, tpm = LIMITS["rpm"], LIMITS["tpm"]
    tokens = {r.index: (r.usage or {}).get("total_tokens", 0) for r in admitted}
    worst_request = max(tokens.values(), default=0)
    in_flight = _most_at_once(admitted)
    out = []
    for i, first in enumerate(admitted):
        for last in admitted[i:]:
            assert last.first_byte is not None
            span = last.first_byte - first.sent
            inside = [r for r in admitted[i:] if r.first_byte and r.first_byte <= last.first_byte]
            allowed = rpm + rpm * span / 60 + 1
            if len(inside) > allowed:
                out.append(
                    f"{len(inside)} requests admitted in {span:.1f} s (allowed {allowed:.1f})"
                )
            used = sum(tokens[r.index] for r in inside)
            budget = tpm + tpm * span / 60 + in_flight * worst_request
            if used > budget:
                out.append(f"{used} tokens admitted in {span:.1f} s (allowed {budget:.0f})")
    return out[:5]


def _most_at_once(records: list[Record]) -> int:
    edges = sorted([(r.sent, 1) for r in records] + [(r.ended, -1) for r in records])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def recovered(
    cluster: Cluster,
    adapters: Callable[[], set[str]],
    timeout: float,
    replicas: list[Replica] | None = None,
) -> tuple[list[str], float]:
    """Once every replica answers, within `timeout` every gateway routes to every
    replica (or to those of `replicas`) again (ready, healthy, circuit closed or
    letting a trial through: no breaker stuck), each holds every adapter loaded
    through the gateways, and both gateways serve exactly those adapters (they share
    their registry). `adapters` is asked on each look: the adapter lane may load or
    unload one meanwhile. Also says how long that took."""
    start = time.monotonic()
    missing: list[str] = []
    while True:
        missing = _not_recovered(cluster, adapters(), replicas or cluster.replicas)
        elapsed = time.monotonic() - start
        if not missing or elapsed > timeout:
            break
        time.sleep(0.05)
    return [f"after {elapsed:.1f} s: {m}" for m in missing], elapsed


def _not_recovered(cluster: Cluster, adapters: set[str], replicas: list[Replica]) -> list[str]:
    missing = []
    names = {r.name for r in replicas}
    for name, url in zip("ab", cluster.gateways, strict=True):
        (backends,) = cluster.ready(url).get("backends", {"?": []}).values()
        for b in backends:
            if b["name"] in names and not b["routable"]:
                missing.append(f"gateway {name}: {b['name']} is {b}")
        listed = httpx.get(url + "/v1/adapters", headers=ADMIN.headers, timeout=5).json()
        serving = {a["name"] for a in listed["data"] if a["state"] == "ready"}
        if serving != adapters:
            missing.append(f"gateway {name} serves adapters {sorted(serving)}")
    for replica in replicas:
        try:
            held = {m.split("@")[0] for m in replica.upstream_models()}
        except httpx.HTTPError as exc:
            missing.append(f"{replica.name} does not answer (alive: {replica.alive}): {exc}")
            continue
        if not adapters <= held:
            missing.append(f"{replica.name} lacks {sorted(adapters - held)}")
        if CHURNED in held - adapters:
            missing.append(f"{replica.name} still holds {CHURNED}, unloaded through the gateways")
    return missing


RUNNING = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\} (\S+)$", re.M)


def no_orphans(cluster: Cluster, timeout: float) -> list[str]:
    """No generation keeps running in a replica after every client has gone."""
    busy: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = []
        for replica in cluster.replicas:
            try:
                text = httpx.get(replica.url + "/metrics", timeout=5).text
            except httpx.HTTPError as exc:
                busy.append(f"{replica.name} does not answer: {exc}")
                continue
            count = sum(float(v) for _, v in RUNNING.findall(text))
            if count:
                busy.append(f"{replica.name}: {count:g} requests running or waiting")
        if not busy:
            return []
        time.sleep(0.5)
    return busy


def cut_streams_resume(records: list[Record]) -> list[str]:
    """Faults hit one replica at a time, so a stream cut by a replica fault after its
    first text goes on on the other one (gateway/resume.py): no error event after
    text. Every request of the load can resume (no constrained decoding)."""
    out = []
    for r in records:
        if r.stream and r.error_after_text and not r.left:
            message = (r.error or {}).get("error", {}).get("message", "")
            out.append(f"#{r.index} {r.path} on {r.backend}: cut: {message[:300]}")
    return out


RECORD_CHECKS: list[Callable[[list[Record]], list[str]]] = [
    every_request_ends,
    nothing_lost_before_the_first_byte,
    cut_streams_resume,
    no_duplicated_text,
    cache_is_faithful,
    limits_hold,
]
RECOVERY_S = 2 * PROBE["probe_interval_s"]
