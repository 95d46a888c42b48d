"""Every Prometheus metric of the gateway, defined once, on a registry owned by the app.

Request metrics are measured at the gateway, as clients feel them: time to first
token is from the request's arrival to the first chunk with text leaving the engine
(or remote backend); inter-token latency is the gap between consecutive chunks with
text. State that already lives elsewhere (backend health, circuits, queues, engine
scheduler stats, in-flight counts) is read at scrape time by a collector, never copied.

Labels are bounded: `model` and `adapter` are only names this gateway serves (a name a
client made up is counted as model="unknown"), `backend` only configured engine names.

One process, by default: the registry holds the metrics themselves. With worker
processes (`switchyard serve --workers N`, gateway/workers/) prometheus-client runs in
its multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before any worker imports it):
each process writes its values to files in that directory, and a scrape, whichever
worker answers it, reads every process's files (`MultiProcessCollector`): counters
and histograms summed over all workers, those that exited included. State read at
scrape time lives in one worker only, so each worker copies its collectors' samples
into those files (`_Mirror`: on every scrape it answers, and each second from the
worker's own loop) and they aggregate over the live workers: in-flight counts, queue
depths, cache sizes and flights summed (`livesum`); `backend_up` and
`backend_healthy` the least of the workers' views (1: every worker routes to it);
circuit states, adapters listed and keys loaded the most (a circuit state is 1 where
any worker is in it); counters among them (probe failures, adapter operations, store
errors) summed over every worker, each of which probes, loads and reads the keys file
on its own. `switchyard_workers` counts the live workers and
`switchyard_worker_requests{pid}` what each finished. Replicas are scraped each on its
own /metrics and aggregated in PromQL with `sum by (...)`.
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from engines.types import Chunk
from gateway.auth.keys import KeyRing
from gateway.auth.limits import Limiter
from gateway.cache.responses import ResponseCache
from gateway.call import Outcome
from gateway.catalog import Catalog

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
UNKNOWN = "unknown"
NONE = ""


class Metrics:
    def __init__(
        self,
        catalog: Catalog,
        cache: ResponseCache | None = None,
        limiter: Limiter | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        shared = shared_values()
        own = CollectorRegistry(auto_describe=True) if shared is None else None
        r = own
        by = ("model", "adapter")
        self.requests = Counter(
            "switchyard_requests",
            "Requests finished, by endpoint and outcome.",
            (*by, "backend", "status", "stream", "cache", "endpoint"),
            registry=r,
        )
        self.duration = Histogram(
            "switchyard_request_duration_seconds",
            "End-to-end request time, arrival to last byte, by endpoint.",
            (*by, "endpoint"),
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "switchyard_time_to_first_token_seconds",
            "Arrival to the first chunk with text.",
            (*by, "stream"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "switchyard_inter_token_latency_seconds",
            "Gap between consecutive chunks with text.",
            by,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "switchyard_time_per_output_token_seconds",
            "(last token - first token) / (completion tokens - 1), per request.",
            by,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "switchyard_output_tokens_per_second",
            "Completion tokens / end-to-end time, per request.",
            by,
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "switchyard_prompt_tokens", "Prompt tokens of finished requests.", by, registry=r
        )
        self.completion_tokens = Counter(
            "switchyard_completion_tokens", "Completion tokens sent.", by, registry=r
        )
        self.queue_wait = Histogram(
            "switchyard_queue_wait_seconds",
            "Time a request waited for a backend with room.",
            ("model",),
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.retries = Counter(
            "switchyard_retries", "Requests retried on another backend.", ("model",), registry=r
        )
        self.resumes = Counter(
            "switchyard_resumes",
            "Streams cut by their backend after their first chunk, by what followed: resumed"
            " on another backend, failed (a resume was tried and did not finish), or refused"
            " (the answer cannot go on from its tokens, e.g. constrained decoding).",
            ("model", "result"),
            registry=r,
        )
        self.cache = Counter(
            "switchyard_cache_lookups",
            "Generation requests by what the response cache did: hit (no generation of"
            " their own), miss (generated) or bypass (not cacheable, or cache off).",
            ("model", "result"),
            registry=r,
        )
        self.key_requests = Counter(
            "switchyard_key_requests",
            "Generation requests by API key label and status.",
            ("key", "status"),
            registry=r,
        )
        self.rate_limited = Counter(
            "switchyard_rate_limited",
            "Requests refused by a key's rate limit, by key label and limit.",
            ("key", "limit"),
            registry=r,
        )
        live = own if own is not None else CollectorRegistry(auto_describe=True)
        live.register(_StateCollector(catalog))
        if cache is not None:
            live.register(_CacheCollector(cache))
        if limiter is not None:
            live.register(_LimiterCollector(limiter))
        if keys is not None and keys.settings.keys_file is not None:
            live.register(_KeysCollector(keys))
        # What /metrics serves: this process's registry, or every worker's files.
        self.mirror: _Mirror | None = None
        self.registry = live
        if shared is not None:
            live.register(_WorkerCollector(self.requests))
            self.mirror = _Mirror(live)
            self.registry = CollectorRegistry()
            self.registry.register(self.mirror)  # first: this worker's state, fresh
            MultiProcessCollector(self.registry, str(shared))  # type: ignore[no-untyped-call]
        # Series that may stay at zero exist from the start, so rates and ratios over
        # them answer 0 rather than nothing.
        for model in catalog.models:
            self.retries.labels(model.id)
            for result in ("hit", "miss", "bypass"):
                self.cache.labels(model.id, result)
            for result in ("resumed", "failed", "refused"):
                self.resumes.labels(model.id, result)

    def start(self, stream: bool) -> Observation:
        return Observation(self, stream)


@dataclass(slots=True)
class Observation:
    """One request's measurements; `finish` records them once. The pipeline calls
    `chunk` for every chunk as it leaves the engine (before any buffering)."""

    metrics: Metrics
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    gaps: list[float] = field(default_factory=list)
    done: bool = False

    def chunk(self, chunk: Chunk, now: float) -> None:
        """`chunk` left the engine at `now` (perf_counter)."""
        if not chunk.text:
            return
        if self.first_token is None:
            self.first_token = now
        elif self.last_token is not None:
            self.gaps.append(now - self.last_token)
        self.last_token = now

    def finish(
        self,
        status: int,
        outcome: Outcome,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        key: str | None = None,
        endpoint: str = "chat",
    ) -> dict[str, object]:
        """Record, and return the facts for the access log."""
        if self.done:
            return {}
        self.done = True
        m = self.metrics
        model = outcome.model or UNKNOWN  # unresolved names never become labels
        labels = (model, outcome.adapter or NONE)
        stream = "true" if self.stream else "false"
        elapsed = time.perf_counter() - self.started
        cache = outcome.cache
        backend = outcome.backend or NONE
        m.requests.labels(*labels, backend, str(status), stream, cache, endpoint).inc()
        if outcome.model is not None:
            m.cache.labels(model, cache).inc()
        if key is not None:
            m.key_requests.labels(key, str(status)).inc()
        if outcome.attempts > 1:
            m.retries.labels(model).inc(outcome.attempts - 1)
        for result in outcome.resumes:
            m.resumes.labels(model, result).inc()
        if outcome.attempts:
            m.queue_wait.labels(model).observe(outcome.queue_wait_s)
        facts: dict[str, object] = {"duration_ms": round(elapsed * 1000, 2)}
        if status != 200:
            return facts
        m.duration.labels(*labels, endpoint).observe(elapsed)
        m.prompt_tokens.labels(*labels).inc(prompt_tokens)
        m.completion_tokens.labels(*labels).inc(completion_tokens)
        if elapsed > 0 and completion_tokens:
            m.tokens_per_s.labels(*labels).observe(completion_tokens / elapsed)
        if self.first_token is not None:
            ttft = self.first_token - self.started
            m.ttft.labels(*labels, stream).observe(ttft)
            facts["ttft_ms"] = round(ttft * 1000, 2)
        observe_all(m.itl.labels(*labels), self.gaps)
        if self.first_token is not None and self.last_token is not None and completion_tokens > 1:
            tpot = (self.last_token - self.first_token) / (completion_tokens - 1)
            m.tpot.labels(*labels).observe(tpot)
        return facts


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe` of each value, with one increment per bucket hit and one of
    the sum: a stream's inter-token gaps, one per token, would otherwise take two
    locks each at its end. Its bucket for a value is `observe`'s: the first upper
    bound not below it (the last is +Inf)."""
    if not values:
        return
    bounds = histogram._upper_bounds
    hits = collections.Counter(bisect.bisect_left(bounds, value) for value in values)
    histogram._sum.inc(sum(values))
    for bucket, count in hits.items():
        histogram._buckets[bucket].inc(count)


def shared_values() -> Path | None:
    """The directory where prometheus-client keeps every process's values, if it runs
    in its multiprocess mode (decided when it was imported); None otherwise."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is None or values.ValueClass is values.MutexValue:
        return None
    return Path(directory)


class _StateCollector(Collector):
    """Gauges read at scrape time from the balancer and the engines."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        up = GaugeMetricFamily(
            "switchyard_backend_up", "1 if the backend is routable.", labels=["model", "backend"]
        )
        healthy = GaugeMetricFamily(
            "switchyard_backend_healthy",
            "1 if the backend passes its health probes.",
            labels=["model", "backend"],
        )
        circuit = GaugeMetricFamily(
            "switchyard_backend_circuit_state",
            "The backend's circuit breaker: 1 for its current state.",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "switchyard_backend_in_flight", "Requests in flight.", labels=["model", "backend"]
        )
        queued = GaugeMetricFamily(
            "switchyard_queue_depth", "Requests waiting for a backend.", labels=["model"]
        )
        running = GaugeMetricFamily(
            "switchyard_engine_running", "Requests running in the engine.", labels=["backend"]
        )
        waiting = GaugeMetricFamily(
            "switchyard_engine_waiting", "Requests waiting in the engine.", labels=["backend"]
        )
        kv = GaugeMetricFamily(
            "switchyard_engine_kv_cache_usage",
            "KV-cache usage (0-1), in-process engines.",
            labels=["backend"],
        )
        adapters = GaugeMetricFamily(
            "switchyard_adapters_loaded", "Adapters listed, per base.", labels=["base"]
        )
        probe_failures = CounterMetricFamily(
            "switchyard_backend_probe_failures",
            "Failed active health probes.",
            labels=["backend"],
        )
        registry = self.catalog.adapters
        operations = CounterMetricFamily(
            "switchyard_adapter_operations",
            "Adapter loads and unloads.",
            labels=["operation"],
        )
        operations.add_metric(["load"], registry.loads)
        operations.add_metric(["unload"], registry.unloads)
        for model in self.catalog.models:
            pool = model.pool
            queued.add_metric([model.id], pool.queued)
            listed = sum(1 for r in self.catalog.adapters.records() if r.pool is pool)
            adapters.add_metric([model.id], listed)
            for backend in pool.backends:
                name = backend.name
                up.add_metric([model.id, name], float(backend.routable(now)))
                healthy.add_metric([model.id, name], float(backend.healthy))
                state = backend.breaker.state(now)
                for s in ("closed", "open", "half_open"):
                    circuit.add_metric([name, s], float(s == state))
                in_flight.add_metric([model.id, name], backend.in_flight)
                probe_failures.add_metric([name], backend.probe_failures)
                stats = backend.engine.stats()
                running.add_metric([name], stats.running)
                waiting.add_metric([name], stats.waiting)
                kv.add_metric([name], stats.kv_cache_usage)
        yield from (up, healthy, circuit, in_flight, queued, running, waiting, kv, adapters)
        yield from (probe_failures, operations)


class _CacheCollector(Collector):
    """The response cache's own state: store failures, and the memory store's size."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "switchyard_cache_errors",
            "Response cache store failures, served around (get, set, decode).",
            labels=["operation"],
        )
        for operation in ("get", "set", "decode"):
            errors.add_metric([operation], self.cache.errors[operation])
        yield errors
        flights = self.cache.flights()
        yield GaugeMetricFamily(
            "switchyard_cache_flights", "Generations identical requests may join.", len(flights)
        )
        yield GaugeMetricFamily(
            "switchyard_cache_followers",
            "Requests following those generations.",
            sum(f.followers for f in flights),
        )
        held = self.cache.store.held() if self.cache.store is not None else None
        if held is not None:
            entries, size = held
            yield GaugeMetricFamily(
                "switchyard_cache_entries", "Entries in the in-memory cache.", entries
            )
            yield GaugeMetricFamily(
                "switchyard_cache_bytes", "Bytes held by the in-memory cache.", size
            )


class _LimiterCollector(Collector):
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "switchyard_rate_limit_errors",
            "Rate limiter store (Redis) failures, handled by on_redis_error.",
            self.limiter.errors,
        )
        yield GaugeMetricFamily(
            "switchyard_rate_limit_deferred_tokens",
            "Tokens the rate limiter's store (Redis) failed to charge, held for their "
            "key's next charge.",
            self.limiter.deferred_tokens,
        )


class _KeysCollector(Collector):
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "switchyard_keys_file_errors",
            "Changes of the keys file that could not be used; its keys were dropped.",
            self.keys.errors,
        )
        yield GaugeMetricFamily(
            "switchyard_keys_loaded", "API keys accepted now (config and file).", self.keys.loaded
        )


class _WorkerCollector(Collector):
    """This worker, for the aggregate: 1 (summed: the live workers) and the requests
    it finished (one series per live worker, by pid)."""

    def __init__(self, requests: Counter) -> None:
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("switchyard_workers", "Worker processes alive.", 1)
        finished = sum(
            sample.value
            for metric in self.requests.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        yield GaugeMetricFamily(
            "switchyard_worker_requests", "Requests this worker finished (by pid).", finished
        )


# How a worker's state aggregates over the live workers (gateway/workers/): `livesum`
# unless named here; `liveall` keeps one series per worker (a `pid` label).
_MODES = {
    "switchyard_backend_up": "livemin",
    "switchyard_backend_healthy": "livemin",
    "switchyard_backend_circuit_state": "livemax",
    "switchyard_engine_kv_cache_usage": "livemax",
    "switchyard_adapters_loaded": "livemax",
    "switchyard_keys_loaded": "livemax",
    "switchyard_worker_requests": "liveall",
}


class _Mirror(Collector):
    """Copies this worker's live collectors into prometheus-client's multiprocess
    files, where every worker's scrape reads them: gauges as gauges of their mode
    (`_MODES`), counters as counters advanced by what they grew since the last copy.
    As a collector it yields nothing: collecting refreshes the copy (first thing in a
    scrape). `refresh` is also called each second by the worker (gateway/workers/)."""

    def __init__(self, live: CollectorRegistry) -> None:
        self.live = live
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._copied: dict[tuple[str, tuple[str, ...]], float] = {}

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        yield from ()

    def refresh(self) -> None:
        for family in self.live.collect():
            if not family.samples:
                continue
            labels = tuple(family.samples[0].labels)
            if family.type == "gauge":
                gauge = self._gauges.get(family.name)
                if gauge is None:
                    mode = _MODES.get(family.name, "livesum")
                    gauge = Gauge(
                        family.name, family.documentation, labels, registry=None,
                        multiprocess_mode=mode,  # type: ignore[arg-type]
                    )  # fmt: skip
                    self._gauges[family.name] = gauge
                for sample in family.samples:
                    (gauge.labels(**sample.labels) if labels else gauge).set(sample.value)
            elif family.type == "counter":
                counter = self._counters.get(family.name)
                if counter is None:
                    counter = Counter(family.name, family.documentation, labels, registry=None)
                    self._counters[family.name] = counter
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (family.name, tuple(sample.labels.values()))
                    grown = sample.value - self._copied.get(key, 0.0)
                    if grown > 0:
                        (counter.labels(**sample.labels) if labels else counter).inc(grown)
                        self._copied[key] = sample.value
