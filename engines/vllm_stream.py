"""Streamed chat answers read from vLLM's outputs, in process.

vLLM's `OpenAIServingChat` prepares a streamed chat request exactly as `vllm serve`
does (chat template, validation, sampling parameters, the model's defaults) and starts
it; what the engine then produces (a `RequestOutput` per engine step, each choice's new
tokens and text) becomes engine chunks here, where vLLM's own stream generator would
build pydantic chunks, dump them as JSON, and leave the engine to parse them back: that
round trip cost more than a tenth of the gateway's CPU per streamed token, as much as
the rest of vLLM's serving layer. Every per-token decision is still vLLM's, made by the
same calls its generator makes: the request's parser (`parse_delta`: content,
reasoning, tool calls), its logprobs (`_create_chat_logprobs`), its error check
(`_raise_if_error`) and its parallel-tool-calls filter. Around them, the generator's
rules, in its terms:

- first output: each choice's prompt token ids (`return_token_ids`); with `echo`, the
  last message's content when it is the assistant's
- an output with neither text nor tokens before a choice's first is skipped (chunked
  prefill); a delta the parser holds back is sent only when it ends the choice or
  carries logprobs or token ids
- `include_reasoning: false` under a parser hides token ids and logprobs (they would
  spell out the reasoning)
- a choice that streamed tool calls, under `auto` or `required`, finishes with
  `tool_calls` where vLLM says `stop`
- last: the usage (prompt and completion tokens; cached tokens with
  `enable_prompt_tokens_details`)

A chunk is kept when `EventReader` (engines/openai_wire.py) would keep the event it
replaces, so the two paths give the same chunks; token counts are exact per chunk, and
the last chunk settles what held-back deltas generated. Completions streams and whole
answers still come from vLLM's serving as JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from engines.openai_wire import finish_reason
from engines.types import Chunk, TokenLogprob, ToolCallDelta


def chat_serving_class() -> type:
    """vLLM's `OpenAIServingChat`, whose streams are engine chunks (`chat_chunks`)
    instead of SSE text."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat

    class ChatServing(OpenAIServingChat):  # type: ignore[misc]
        def chat_completion_stream_generator(
            self,
            request: Any,
            result_generator: AsyncGenerator[Any, None],
            request_id: str,
            model_name: str,
            conversation: list[Any],
            tokenizer: Any,
            request_metadata: Any,
            chat_template_kwargs: dict[str, Any] | None = None,
            mm_token_counts: dict[str, int] | None = None,
        ) -> AsyncGenerator[Chunk, None]:
            stream = _ChatStream(self, request, request_id, tokenizer, chat_template_kwargs)
            return stream.chunks(result_generator, conversation, mm_token_counts)

    return ChatServing


class _ChatStream:
    """One streamed chat request's choices, as vLLM's generator keeps them."""

    def __init__(
        self,
        serving: Any,
        request: Any,
        request_id: str,
        tokenizer: Any,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionNamedToolChoiceParam,
        )
        from vllm.entrypoints.serve.utils.tool_calls_utils import (
            maybe_filter_parallel_tool_calls,
        )

        self.first_call_only = maybe_filter_parallel_tool_calls
        self.serving = serving
        self.request = request
        self.request_id = request_id
        self.tokenizer = tokenizer
        n = request.n or 1
        self.parsers = [
            serving._make_parser(request, tokenizer, chat_template_kwargs)
            if serving.parser_cls is not None
            else None
            for _ in range(n)
        ]
        self.named_tool = isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam)
        self.hidden = not request.include_reasoning and serving.parser_cls is not None
        self.ids = bool(request.return_token_ids) and not self.hidden
        self.tokens = [0] * n  # vLLM's previous_num_tokens
        self.tools_streamed = [False] * n
        self.finished = [False] * n
        self.counted = 0  # tokens the chunks sent so far carried

    async def chunks(
        self,
        outputs: AsyncGenerator[Any, None],
        conversation: list[Any],
        mm_token_counts: dict[str, int] | None,
    ) -> AsyncGenerator[Chunk, None]:
        """The chunks of `outputs` (closed with the stream, which aborts the request
        inside vLLM), then the usage."""
        from vllm.entrypoints.openai.chat_completion.serving import (
            _make_prompt_tokens_details,
        )

        prompt_tokens = 0
        cached = created = None
        first = True
        async with contextlib.aclosing(outputs) as results:
            async for res in results:
                if res.prompt_token_ids is not None:
                    prompt_tokens = len(res.prompt_token_ids)
                    prompt_tokens += len(res.encoder_prompt_token_ids or ())
                if first:
                    first = False
                    cached, created = res.num_cached_tokens, res.num_cache_creation_tokens
                    for chunk in self._opening(res, conversation):
                        yield chunk
                for output in res.outputs:
                    if delta := self._delta(res, output):
                        self.counted += delta.token_count
                        yield delta
        details = _make_prompt_tokens_details(
            self.serving.enable_prompt_tokens_details, cached, created, mm_token_counts
        )
        owed = sum(self.tokens) - self.counted  # what held-back deltas generated
        yield Chunk(0, "", owed, prompt_tokens, cached_tokens=_cached(details))

    def _opening(self, res: Any, conversation: list[Any]) -> list[Chunk]:
        """Each choice's prompt token ids; with `echo`, the last message's content."""
        request = self.request
        choices = range(len(self.tokens))
        opening = []
        if request.return_token_ids and res.prompt_token_ids:
            ids = tuple(res.prompt_token_ids)
            opening += [Chunk(i, "", 0, 0, prompt_token_ids=ids) for i in choices]
        if request.echo and conversation:
            last = conversation[-1]
            role = self.serving.get_chat_request_role(request)
            content = last.get("content") if last.get("role") == role else None
            if isinstance(content, str) and content:
                opening += [Chunk(i, content, 0, 0) for i in choices]
        return opening

    def _delta(self, res: Any, output: Any) -> Chunk | None:
        """One choice's new output as a chunk; None where vLLM's generator sends
        nothing, or sends an event `EventReader` would drop."""
        i, request = output.index, self.request
        if self.finished[i]:
            return None
        self.serving._raise_if_error(output.finish_reason, self.request_id)
        logprobs = self._logprobs(output) if request.logprobs and not self.hidden else ()
        token_ids = output.token_ids
        if not output.text and not token_ids and not self.tokens[i]:
            return None  # chunked prefill
        self.tokens[i] += len(token_ids)
        text, reasoning = output.text, ""
        calls: tuple[ToolCallDelta, ...] = ()
        if (parser := self.parsers[i]) is not None:
            delta = parser.parse_delta(
                delta_text=output.text,
                delta_token_ids=list(token_ids),
                request=request,
                prompt_token_ids=res.prompt_token_ids,
                finished=output.finish_reason is not None,
            )
            if delta is None and output.finish_reason is None and not logprobs and not self.ids:
                return None
            text, reasoning, calls = self._parsed(i, delta)
        finish, stop = None, None
        if output.finish_reason is not None:
            self.finished[i] = True
            finish = output.finish_reason
            if self.tools_streamed[i] and not self.named_tool and finish == "stop":
                finish = "tool_calls"
            stop = output.stop_reason
        ids = tuple(token_ids) if self.ids else ()
        if not (text or calls or reasoning or finish or ids):
            return None
        return Chunk(i, text, len(token_ids), 0, logprobs, finish_reason(finish), calls,
                     reasoning, stop, token_ids=ids)  # fmt: skip

    def _parsed(self, i: int, delta: Any) -> tuple[str, str, tuple[ToolCallDelta, ...]]:
        """A parser's delta (None: it held everything back) as text, reasoning and tool
        calls; choice `i` streamed tool calls if it has some, before the filter of
        `parallel_tool_calls: false` keeps the first call alone."""
        if delta is None:
            return "", "", ()
        if not delta.tool_calls:
            return delta.content or "", delta.reasoning or "", ()
        self.tools_streamed[i] = True
        delta = self.first_call_only(delta, self.request)
        calls = tuple(
            ToolCallDelta(
                call.index,
                call.id,
                call.function.name if call.function else None,
                (call.function.arguments if call.function else None) or "",
            )
            for call in delta.tool_calls
        )
        return delta.content or "", delta.reasoning or "", calls

    def _logprobs(self, output: Any) -> tuple[TokenLogprob, ...]:
        request = self.request
        logprobs = self.serving._create_chat_logprobs(
            token_ids=output.token_ids,
            top_logprobs=output.logprobs,
            tokenizer=self.tokenizer,
            num_output_top_logprobs=request.top_logprobs,
            logprob_token_ids=request.logprob_token_ids,
            return_as_token_id=request.return_tokens_as_token_ids,
        )
        return tuple(
            TokenLogprob(t.token, float(t.logprob), _alternatives(t.top_logprobs))
            for t in logprobs.content or ()
        )


def _cached(details: Any) -> int | None:
    return None if details is None else details.cached_tokens


def _alternatives(top: list[Any] | None) -> tuple[tuple[str, float], ...]:
    return tuple((a.token, float(a.logprob)) for a in top or ())
