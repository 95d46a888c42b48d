"""A call: what the pipeline is asked (`Call`) and what happened to it (`Outcome`).

Routes build the `Call` from the request body; the pipeline (gateway/pipeline.py)
runs it. The caller creates the `Outcome` before the call runs and keeps it: the
pipeline, and the pooled calls that are not generations (gateway/pooled.py), fill it
in as the request goes, so it says where the request got to even when it fails, and
a stream's is complete when the stream ends. Response headers, metrics and the
access log read these data types, never the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engines.types import GenerationRequest
from gateway.cache.flights import Watch
from gateway.openai.render import Renderer

CacheResult = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True, slots=True)
class Call:
    """One OpenAI request, converted: a generation per prompt, and how to render it.
    `scope` keeps cached answers apart (the caller's key or tenant); `cache_control`
    is the request's Cache-Control header; `watch` sees every chunk with the time it
    left the engine (metrics time tokens there)."""

    request_id: str
    model: str
    requests: list[GenerationRequest]
    renderer: Renderer
    include_usage: bool = False
    scope: str = ""
    cache_control: str = ""
    endpoint: str = ""  # the API's name for metrics and logs; empty: the prompt's kind
    show_backends: bool = False  # error events may tell of backends (an admin asks)
    watch: Watch | None = None

    @property
    def kind(self) -> str:
        """What the engine generates: "chat" (a conversation) or "completions"."""
        return "chat" if self.requests[0].is_chat else "completions"

    @property
    def api(self) -> str:
        """The endpoint the client called: "chat", "completions", "responses"."""
        return self.endpoint or self.kind


@dataclass(slots=True)
class Outcome:
    model: str | None = None  # the model id of the pool that served it
    adapter: str | None = None
    backend: str | None = None  # the last backend tried
    attempts: int = 0
    queue_wait_s: float = 0.0
    failed_mid_stream: bool = False  # a stream ended on an error event
    resumes: list[str] = field(default_factory=list)  # per cut: resumed | failed | refused
    cache: CacheResult = "bypass"
