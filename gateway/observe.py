"""The end of every generation request: its metrics and its access-log line.

The access log is one JSON object per request on the `switchyard.access` logger:
request id, model, adapter, backend, cache result, status, TTFT, tokens, duration.
Prompt text is never logged unless `log_prompts` is on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from engines.errors import EngineError
from gateway.errors import GatewayError, from_engine_error
from gateway.metrics import Metrics, Observation
from gateway.pipeline import Call

access = logging.getLogger("switchyard.access")

DISCONNECTED = 499


@dataclass(slots=True)
class Recorder:
    """Watches one call: created before the pipeline runs, finished exactly once."""

    call: Call
    observation: Observation | None
    stream: bool
    log_prompts: bool = False
    key: str | None = None  # the API key's label
    charge: Callable[[int], Awaitable[None]] | None = None  # tokens to the key's limit

    @classmethod
    def start(
        cls, call: Call, metrics: Metrics | None, stream: bool, log_prompts: bool
    ) -> Recorder:
        observation = metrics.start(stream) if metrics is not None else None
        if observation is not None:
            call.outcome.watch = observation.chunk
        return cls(call, observation, stream, log_prompts)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, GatewayError):
            status = exc.status
        elif isinstance(exc, EngineError):
            status = from_engine_error(exc).status
        else:
            status = 500
        self.finish(status)

    def finish(self, status: int) -> None:
        outcome = self.call.outcome
        usage = self.call.renderer.usage
        facts: dict[str, object] = {}
        if self.observation is not None:
            facts = self.observation.finish(
                status,
                outcome,
                usage.prompt_tokens,
                usage.completion_tokens,
                self.key,
                self.call.api,
            )
        if not access.isEnabledFor(logging.INFO):
            return
        line: dict[str, object] = {
            "request_id": self.call.request_id,
            "endpoint": self.call.api,
            "key": self.key,
            "model": outcome.base,
            "adapter": outcome.adapter,
            "backend": outcome.backend,
            "attempts": outcome.attempts,
            "stream": self.stream,
            "cache": outcome.cache,
            "status": status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            **facts,
        }
        if self.log_prompts:
            line["prompt"] = [str(r.prompt) for r in self.call.requests]
        access.info(orjson.dumps(line).decode())

    async def settle(self) -> None:
        """Charge the tokens used to the key's limit, once."""
        charge, self.charge = self.charge, None
        if charge is not None:
            usage = self.call.renderer.usage
            await charge(usage.prompt_tokens + usage.completion_tokens)

    async def watch_stream(
        self, events: AsyncGenerator[bytes, None]
    ) -> AsyncGenerator[bytes, None]:
        """Pass the SSE events through; finish when the stream ends or is cut."""
        status = DISCONNECTED
        try:
            async for item in events:
                yield item
            status = 500 if self.call.outcome.failed_mid_stream else 200
        finally:
            await events.aclose()
            self.finish(status)
            await self.settle()
