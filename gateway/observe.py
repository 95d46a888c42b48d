"""The end of every model request (generation, embeddings, tokenize): its metrics and
its access-log line, written by `record` for every endpoint alike.

The access log is one JSON object per request on the `switchyard.access` logger:
request id, endpoint, model, adapter, backend, cache result, status, TTFT, tokens,
duration. Prompt text is never logged unless `log_prompts` is on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import orjson

from gateway.auth import limits
from gateway.call import Call, Outcome
from gateway.errors import status_of
from gateway.metrics import Metrics, Observation

access = logging.getLogger("switchyard.access")

DISCONNECTED = 499


@dataclass(frozen=True, slots=True)
class Finished:
    """How one request ended, as metrics and the access log label it."""

    request_id: str
    endpoint: str  # "chat", "completions", "embeddings", "tokenize", ...
    status: int
    stream: bool
    key: str | None  # the API key's label
    outcome: Outcome


def record(
    observation: Observation | None,
    end: Finished,
    prompt_tokens: int,
    completion_tokens: int = 0,
    prompts: list[str] | None = None,
) -> None:
    """Record one finished request: its metrics (if on) and its access-log line (if
    on); `prompts` are logged only when given (`log_prompts`)."""
    outcome = end.outcome
    facts: dict[str, object] = {}
    if observation is not None:
        facts = observation.finish(
            end.status, outcome, prompt_tokens, completion_tokens, end.key, end.endpoint
        )
    if not access.isEnabledFor(logging.INFO):
        return
    line: dict[str, object] = {
        "request_id": end.request_id,
        "endpoint": end.endpoint,
        "key": end.key,
        "model": outcome.model,
        "adapter": outcome.adapter,
        "backend": outcome.backend,
        "attempts": outcome.attempts,
        "resumes": outcome.resumes,
        "stream": end.stream,
        "cache": outcome.cache,
        "status": end.status,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        **facts,
    }
    if prompts is not None:
        line["prompt"] = prompts
    access.info(orjson.dumps(line).decode())


@dataclass(slots=True)
class Recorder:
    """Watches one call: created before the pipeline runs, finished exactly once.
    Its `call` is the one to run (it carries the metrics' watch); its `outcome` is
    what the pipeline fills in."""

    call: Call
    observation: Observation | None
    stream: bool
    outcome: Outcome = field(default_factory=Outcome)
    log_prompts: bool = False
    key: str | None = None  # the API key's label
    charge: Callable[[int], Awaitable[None]] | None = None  # tokens to the key's limit
    reserved: int = 0  # tokens the key's limit took at admission
    leave: Callable[[], None] | None = None  # the key's request in flight ends
    status: int = 0

    @classmethod
    def start(
        cls, call: Call, metrics: Metrics | None, stream: bool, log_prompts: bool
    ) -> Recorder:
        observation = metrics.start(stream) if metrics is not None else None
        if observation is not None:
            call = dataclasses.replace(call, watch=observation.chunk)
        return cls(call, observation, stream, log_prompts=log_prompts)

    def failed(self, exc: BaseException) -> None:
        self.finish(status_of(exc))

    def finish(self, status: int) -> None:
        self.status = status
        call = self.call
        usage = call.renderer.usage
        prompts = [str(r.prompt) for r in call.requests] if self.log_prompts else None
        record(
            self.observation,
            Finished(call.request_id, call.api, status, self.stream, self.key, self.outcome),
            usage.prompt_tokens,
            usage.completion_tokens,
            prompts,
        )

    async def settle(self) -> None:
        """The key's request is no longer in flight; settle its reservation with the
        tokens used, once. A client that left is charged what the engine may have
        spent: the prompt by its bound where the engine never said its length, the
        whole reservation where nothing was counted (an answer awaited whole)."""
        leave, self.leave = self.leave, None
        if leave is not None:
            leave()
        charge, self.charge = self.charge, None
        if charge is None:
            return
        usage = self.call.renderer.usage
        used = usage.prompt_tokens + usage.completion_tokens
        if self.status == DISCONNECTED:
            bound = sum(limits.prompt_bound(r) for r in self.call.requests)
            if not used:  # an answer awaited whole: its engine never said
                used = max(self.reserved, bound)
            elif not usage.prompt_tokens:
                used += bound
        await charge(used - self.reserved)


class WatchedStream:
    """A stream's SSE events, passed through; when they end, break or are closed the
    call is finished and settled exactly once, shielded from the cancellation that
    may be closing it, and even if it is closed before its first event (a client gone
    before the response started: an async generator's `finally` would not run)."""

    def __init__(self, recorder: Recorder, events: AsyncGenerator[bytes, None]) -> None:
        self.recorder = recorder
        self.events = events
        self.ended = False

    def __aiter__(self) -> WatchedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self.events)
        except StopAsyncIteration:
            await self._end(500 if self.recorder.outcome.failed_mid_stream else 200)
            raise
        except BaseException:
            await self._end(DISCONNECTED)
            raise

    async def aclose(self) -> None:
        await self._end(DISCONNECTED)

    async def _end(self, status: int) -> None:
        if self.ended:
            return
        self.ended = True
        with anyio.CancelScope(shield=True):
            await self.events.aclose()
            self.recorder.finish(status)
            await self.recorder.settle()
