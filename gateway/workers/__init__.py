"""Several worker processes on one socket: `switchyard serve --workers N`.

Each worker is a whole gateway (its own event loop, engines, balancer and caches)
started by uvicorn's multiprocess supervisor, which binds the socket once and passes
it to every worker; the kernel hands each new connection to one of them. For
deployments whose engines are all remote: an in-process vLLM engine stays one process.

What a single process keeps in memory is shared by the workers, or refused before
any starts (plan.py says which):

    rate limits (rpm, tpm)      Redis (`auth.rate_limit.backend: redis`), or refused
    per-key max_concurrent      a table the workers share (in_flight.py)
    stored responses            Redis (`responses.backend: redis` or none), or refused
    adapters loaded at run time a ledger in the run directory (gateway/adapter_ledger.py)
    /metrics                    prometheus-client's multiprocess files (gateway/metrics.py)
    response cache (memory)     one per worker, said at start-up (or Redis, shared)
    backend max_in_flight       divided among the workers, said at start-up

supervisor.py is the parent's side (the run directory, the environment the workers
read, the supervisor); worker.py builds the app in each worker.
"""
