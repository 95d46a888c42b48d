"""The one way the gateway opens Redis (rate limits, the response cache, stored
responses, the adapter registry): a timeout on connecting and on each reply, and one
immediate retry on a fresh connection when a pooled one turns out dead, as every
pooled one does once Redis has restarted: a restart then costs no request its limit
or its cache lookup. Timeouts are not retried (the callers' budgets are milliseconds).
The password, if any, comes from the environment variable the section names."""

from __future__ import annotations

import os

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.settings import RedisConnection


class RedisConfigError(Exception):
    """A section names a password variable that is not set."""


def connect(url: str, timeout_s: float, password: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        password=password,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[redis.ConnectionError],
    )


def connect_section(section: RedisConnection) -> redis.Redis:
    return connect(section.redis_url, section.timeout_s, password(section))


def password(section: RedisConnection) -> str | None:
    """The password in `section.password_env`; None when it names none (a password
    in the URL still counts)."""
    if section.password_env is None:
        return None
    value = os.environ.get(section.password_env)
    if not value:
        raise RedisConfigError(
            f"the environment variable {section.password_env} (password_env of a Redis "
            f"section at {section.redis_url}) is not set: set it to Redis's password"
        )
    return value
