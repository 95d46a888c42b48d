"""What N workers need of the settings, checked before any worker starts: the
refusals (each says what to do instead), and each worker's own settings with what
changed in them, said once at start-up."""

from __future__ import annotations

from gateway.settings import Settings

# Engine kinds that hold the model in the gateway's own process.
IN_PROCESS = frozenset({"vllm"})


def refusals(settings: Settings) -> list[str]:
    """Why these settings cannot run on `settings.workers` workers (none: they can)."""
    n = settings.workers
    if n == 1:
        return []
    problems = []
    local = [e.name for e in settings.engines if e.kind in IN_PROCESS]
    if local:
        problems.append(
            f"engine {', '.join(local)} runs vLLM in the gateway's process, which stays "
            f"one process: serve it with workers: 1, or run it as `vllm serve` (whose "
            "--api-server-count scales its own HTTP side) behind an openai_remote engine"
        )
    auth = settings.auth
    limited = [k.label for k in auth.keys if k.rpm is not None or k.tpm is not None]
    if auth.enabled and auth.rate_limit.backend == "memory" and (limited or auth.keys_file):
        which = f"keys {', '.join(limited)} have" if limited else f"{auth.keys_file} may give keys"
        problems.append(
            f"{which} rate limits, which in memory each of the {n} workers would count "
            f"on its own (each key would get {n} times its budget): set "
            "auth.rate_limit.backend: redis (and its redis_url), or serve with workers: 1"
        )
    if settings.responses.backend == "memory":
        problems.append(
            "the Responses API store (responses.backend) is in memory, where a response "
            "stored by one worker is unknown to the others (previous_response_id would "
            "fail): set responses.backend: redis (and its redis_url), or none to refuse "
            "stored state, or serve with workers: 1"
        )
    for engine in settings.engines:
        if engine.max_in_flight is not None and engine.max_in_flight < n:
            problems.append(
                f"engine {engine.name}: max_in_flight {engine.max_in_flight} is divided "
                f"among the workers, and is less than one for each of {n}: raise it to "
                f"{n} or more, or serve with fewer workers"
            )
    return problems


def per_worker(settings: Settings) -> tuple[Settings, list[str]]:
    """Each worker's settings (`refusals` must be empty) and what to say about them:
    every backend's max_in_flight divided among the workers, and what stays per
    worker."""
    n = settings.workers
    notes = [f"{n} workers on {settings.host}:{settings.port}, one socket"]
    engines = []
    for engine in settings.engines:
        if engine.max_in_flight is not None:
            share = engine.max_in_flight // n
            notes.append(
                f"engine {engine.name}: max_in_flight {engine.max_in_flight} is {share} "
                f"per worker ({share * n} in all)"
            )
            engine = engine.model_copy(update={"max_in_flight": share})
        engines.append(engine)
    cache = settings.cache
    if cache.backend == "memory":
        notes.append(
            f"response cache: in memory, one per worker ({n} caches of up to "
            f"{cache.max_bytes} bytes; a request is answered from its own worker's "
            "cache only): set cache.backend: redis to share one"
        )
    auth = settings.auth
    if auth.enabled and auth.rate_limit.backend == "redis":
        notes.append("rate limits: in Redis, shared by the workers")
    if auth.enabled:
        notes.append("per-key max_concurrent: counted across the workers")
    notes.append(
        f"per worker: balancer.queue_size ({settings.balancer.queue_size}) and each "
        "engine's connection pool; health probes run in every worker"
    )
    return settings.model_copy(update={"engines": engines}), notes
