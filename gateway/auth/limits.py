"""Per-key rate limits: a token bucket for requests (`rpm`) and one for tokens (`tpm`),
each refilled continuously over a minute.

A request is admitted when its key has a request left and is not in token debt, and
its worst case (`worst_case`: the prompt at one token per byte, plus max_tokens for
each choice of each prompt) is taken from the tokens bucket at once: a key cannot
start a minute's budget of long answers in parallel, only run into debt by one
request's worst case. When the request ends, what it really used is settled
(`charge` of used minus reserved: a refund, or more debt where the estimate fell
short), so the bucket holds what was used. In memory by default; in Redis when
gateway replicas share limits, where one Lua script checks and takes both buckets
atomically on Redis's own clock, and a bucket's key expires only once the bucket
would be full again (a missing key is a full bucket), so a debt lasts as long as it
does in memory.

Redis failing is counted and, by `on_redis_error`, lets requests through (allow) or
refuses them with 503 (deny); after a failure Redis is left alone for
`retry_after_s`, as the response cache does. A request admitted without Redis
reserved nothing (`Verdict.reserved` 0), so it is charged in full when it ends; a
charge Redis did not take is kept here (`deferred_tokens`) and added to the key's
next charge: a failure forgives no debt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import redis.asyncio as redis

from engines.types import GenerationRequest
from gateway import redis_client
from gateway.auth.keys import Principal
from gateway.backoff import Backoff
from gateway.settings import RateLimitSettings

log = logging.getLogger("switchyard")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limiter said, for the `x-ratelimit-*` headers and Retry-After."""

    allowed: bool
    requests_left: float | None = None
    tokens_left: float | None = None
    retry_after_s: float = 0.0
    limit: str = ""  # which one refused: "requests" or "tokens"
    unavailable: bool = False  # the shared store failed
    reserved: int = 0  # tokens taken at admission, settled when the request ends


class Limiter(Protocol):
    errors: int

    @property
    def deferred_tokens(self) -> int:
        """Tokens charged while the store failed, held for their key's next charge."""
        ...

    async def admit(self, principal: Principal, reserve: int = 0) -> Verdict:
        """Take one request and `reserve` tokens, or refuse (nothing taken)."""
        ...

    async def charge(self, principal: Principal, tokens: int) -> None:
        """Take `tokens` more from the key's bucket (fewer than 0: give them back)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60)
        self.at = now
        return self.level


def _wait(level: float, need: float, capacity: float) -> float:
    """Seconds until `level` reaches `need`, refilling `capacity` a minute."""
    return max(0.0, (need - level) * 60 / capacity)


@dataclass
class MemoryLimiter:
    clock: Callable[[], float] = time.monotonic
    errors: int = 0
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    @property
    def deferred_tokens(self) -> int:
        return 0

    async def admit(self, principal: Principal, reserve: int = 0) -> Verdict:
        now = self.clock()
        requests = self._bucket(principal.label, "requests", principal.rpm, now)
        tokens = self._bucket(principal.label, "tokens", principal.tpm, now)
        if requests is not None and requests.level < 1:
            wait = _wait(requests.level, 1, requests.capacity)
            return _refused("requests", requests, tokens, wait)
        if tokens is not None and tokens.level <= 0:
            wait = _wait(tokens.level, 1, tokens.capacity)
            return _refused("tokens", requests, tokens, wait)
        if requests is not None:
            requests.level -= 1
        if tokens is not None:
            tokens.level -= reserve
        return Verdict(
            True, _level(requests), _level(tokens), reserved=reserve if tokens is not None else 0
        )

    async def charge(self, principal: Principal, tokens: int) -> None:
        bucket = self._bucket(principal.label, "tokens", principal.tpm, self.clock())
        if bucket is not None:
            bucket.level = min(bucket.capacity, bucket.level - tokens)

    async def aclose(self) -> None:
        return None

    def _bucket(self, label: str, kind: str, per_minute: int | None, now: float) -> _Bucket | None:
        if per_minute is None:
            return None
        bucket = self._buckets.get((label, kind))
        if bucket is None or bucket.capacity != per_minute:
            bucket = self._buckets[(label, kind)] = _Bucket(per_minute, per_minute, now)
        bucket.refill(now)
        return bucket


def _level(bucket: _Bucket | None) -> float | None:
    return None if bucket is None else bucket.level


def _refused(limit: str, requests: _Bucket | None, tokens: _Bucket | None, wait: float) -> Verdict:
    return Verdict(False, _level(requests), _level(tokens), wait, limit)


# KEYS: the requests bucket, the tokens bucket. ARGV: rpm, tpm (0 = no limit), mode
# ("admit" or "charge"), tokens (to reserve on admission; to charge, fewer than 0 a
# refund). Buckets are hashes {level, at} (at in ms of Redis's clock); every write
# sets the key to expire a second after the bucket would be full again, so no debt
# expires with it. Returns {allowed, requests left * 1000, tokens left * 1000,
# wait ms, refused by}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function load(key, capacity)
  if capacity <= 0 then return nil end
  local v = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(v[1]) or capacity
  local at = tonumber(v[2]) or now
  return math.min(capacity, level + (now - at) * capacity / 60000)
end
local function store(key, level, capacity)
  level = math.min(capacity, level)
  redis.call('HSET', key, 'level', tostring(level), 'at', now)
  redis.call('PEXPIRE', key, math.ceil((capacity - level) * 60000 / capacity) + 1000)
end
local rpm, tpm, mode, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local requests, tokens = load(KEYS[1], rpm), load(KEYS[2], tpm)
if mode == 'charge' then
  if tokens then store(KEYS[2], tokens - cost, tpm) end
  return {1, 0, 0, 0, ''}
end
local r = requests and math.floor(requests * 1000) or -1
local k = tokens and math.floor(tokens * 1000) or -1
if requests and requests < 1 then
  return {0, r, k, math.ceil((1 - requests) * 60000 / rpm), 'requests'}
end
if tokens and tokens <= 0 then
  return {0, r, k, math.ceil((1 - tokens) * 60000 / tpm), 'tokens'}
end
if requests then store(KEYS[1], requests - 1, rpm); r = r - 1000 end
if tokens then store(KEYS[2], tokens - cost, tpm); k = k - cost * 1000 end
return {1, r, k, 0, ''}
"""


class RedisLimiter:
    def __init__(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        self.errors = 0
        self._deferred: Counter[str] = Counter()  # tokens by key label
        self._backoff = Backoff(settings.retry_after_s)
        self._client = redis_client.connect_section(settings)
        self._script = self._client.register_script(_SCRIPT)

    async def admit(self, principal: Principal, reserve: int = 0) -> Verdict:
        reply = await self._run(principal, "admit", reserve)
        if reply is None:
            return Verdict(self.settings.on_redis_error == "allow", unavailable=True)
        allowed, requests, tokens, wait_ms, limit = reply
        return Verdict(
            bool(allowed),
            None if principal.rpm is None else int(requests) / 1000,
            None if principal.tpm is None else int(tokens) / 1000,
            int(wait_ms) / 1000,
            limit.decode() if isinstance(limit, bytes) else str(limit),
            reserved=reserve if allowed and principal.tpm is not None else 0,
        )

    @property
    def deferred_tokens(self) -> int:
        return sum(self._deferred.values())

    async def charge(self, principal: Principal, tokens: int) -> None:
        if principal.tpm is None:
            return
        owed = tokens + self._deferred.pop(principal.label, 0)
        if await self._run(principal, "charge", owed) is None:
            self._deferred[principal.label] += owed

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _run(self, principal: Principal, mode: str, tokens: int) -> list[Any] | None:
        """The script's reply; None when Redis failed, or failed lately (`retry_after_s`)."""
        if not self._backoff.up():
            return None
        base = f"{self.settings.prefix}{principal.label}:"
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                reply = await self._script(
                    keys=[base + "requests", base + "tokens"],
                    args=[principal.rpm or 0, principal.tpm or 0, mode, tokens],
                )
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            self._backoff.failed()
            log.warning("rate limiter: redis failed (%s: %s)", type(exc).__name__, exc)
            return None
        return list(reply)


TEMPLATE_TOKENS = 64  # a chat template's own words, per conversation and per message


def prompt_bound(request: GenerationRequest) -> int:
    """At least as many tokens as `request`'s prompt can take, without a tokenizer:
    one per byte of text (byte-level BPE never does worse; a message as its JSON,
    tool calls and all) or per token id, and `TEMPLATE_TOKENS` for the chat
    template's scaffolding around the conversation and each message."""
    prompt = request.prompt
    if not request.is_chat:
        return len(prompt) if isinstance(prompt, tuple) else len(str(prompt).encode())
    text = sum(len(orjson.dumps(m.wire())) for m in request.messages)
    tools = len(orjson.dumps(request.options["tools"])) if "tools" in request.options else 0
    return text + tools + TEMPLATE_TOKENS * (1 + len(request.messages))


def worst_case(requests: Sequence[GenerationRequest]) -> int:
    """The most tokens `requests` (one call's prompts) may take: each prompt, and its
    max_tokens for each of its n choices (none: only the prompt is known)."""
    return sum(prompt_bound(r) + (r.max_tokens or 0) * r.n for r in requests)


class InFlight:
    """Requests in flight per key label, in this process (each gateway replica bounds
    its own): at most the key's `max_concurrent` at once, so a key whose streams are
    read slowly, or never, cannot hold every backend slot."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def enter(self, principal: Principal) -> bool:
        bound = principal.max_concurrent
        if bound is not None and self.counts[principal.label] >= bound:
            return False
        self.counts[principal.label] += 1
        return True

    def leave(self, principal: Principal) -> None:
        self.counts[principal.label] -= 1
        if self.counts[principal.label] <= 0:
            del self.counts[principal.label]


def build_limiter(settings: RateLimitSettings) -> Limiter:
    return RedisLimiter(settings) if settings.backend == "redis" else MemoryLimiter()


def headers(principal: Principal, verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers (and Retry-After when refused)."""
    out: dict[str, str] = {}
    for kind, limit, left in (
        ("requests", principal.rpm, verdict.requests_left),
        ("tokens", principal.tpm, verdict.tokens_left),
    ):
        if limit is None or left is None:
            continue
        out[f"x-ratelimit-limit-{kind}"] = str(limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(left)))
        out[f"x-ratelimit-reset-{kind}"] = duration(_wait(left, limit, limit))
    if not verdict.allowed and verdict.retry_after_s:
        out["retry-after"] = str(max(1, math.ceil(verdict.retry_after_s)))
    return out


def duration(seconds: float) -> str:
    """As OpenAI writes them: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
