"""What a cache entry holds: the engine chunks of a complete generation, in order,
with their prompt slots — not rendered OpenAI bytes — so a hit can be rendered as a
JSON body or replayed as SSE (fresh id and created) whichever way it was recorded.
An entry names its key, and is refused under any other: a store that answered for
the wrong key (a stale reply on a reused connection) never serves a wrong answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engines.types import FINISH_REASONS, Chunk, TokenLogprob, ToolCallDelta


class CorruptEntry(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    chunks: tuple[tuple[int, Chunk], ...]

    def encode(self, key: str) -> bytes:
        return orjson.dumps(
            [
                key,
                [
                    [
                        slot,
                        c.index,
                        c.text,
                        c.token_count,
                        c.prompt_tokens,
                        [[t.token, t.logprob, [list(a) for a in t.top]] for t in c.logprobs],
                        c.finish_reason,
                        [[t.index, t.id, t.name, t.arguments] for t in c.tool_calls],
                        c.reasoning,
                        c.stop_reason,
                        c.prompt_logprobs,
                        c.cached_tokens,
                    ]
                    for slot, c in self.chunks
                ],
            ]
        )

    @classmethod
    def decode(cls, data: bytes, key: str) -> Entry:
        try:
            stored_key, rows = orjson.loads(data)
            if stored_key != key:
                raise CorruptEntry("the entry belongs to another key")
            chunks = tuple((int(row[0]), _chunk(*row[1:])) for row in rows)
        except (orjson.JSONDecodeError, TypeError, ValueError, LookupError) as exc:
            raise CorruptEntry(f"not a cache entry: {exc}") from None
        return cls(chunks)


def _chunk(
    index: Any,
    text: Any,
    tokens: Any,
    prompt: Any,
    logprobs: Any,
    finish: Any,
    calls: Any,
    reasoning: Any,
    stop: Any,
    prompt_logprobs: Any,
    cached: Any = None,  # absent from entries stored before it was kept
) -> Chunk:
    """One stored row (after its slot) back into a chunk, every field checked."""
    return Chunk(
        int(index),
        str(text),
        int(tokens),
        int(prompt),
        tuple(
            TokenLogprob(str(tok), float(lp), tuple((str(a), float(b)) for a, b in top))
            for tok, lp, top in logprobs
        ),
        finish if finish in FINISH_REASONS else None,
        tuple(
            ToolCallDelta(int(i), call_id, name, str(arguments))
            for i, call_id, name, arguments in calls
        ),
        str(reasoning),
        stop if isinstance(stop, str | int) and not isinstance(stop, bool) else None,
        prompt_logprobs if isinstance(prompt_logprobs, list) else None,
        cached_tokens=None if cached is None else int(cached),
    )
