"""The one way the gateway opens Redis (rate limits, the response cache, stored
responses): a timeout on connecting and on each reply, and one immediate retry on a
fresh connection when a pooled one turns out dead, as every pooled one does once
Redis has restarted: a restart then costs no request its limit or its cache lookup.
Timeouts are not retried (the callers' budgets are milliseconds)."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[redis.ConnectionError],
    )
