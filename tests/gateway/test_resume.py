"""The pieces of a resume that need no engine: what a cut stream relayed, the request
that continues it, what cannot resume, and stop strings matched across the break."""

from __future__ import annotations

import pytest

from engines.openai_wire import EventReader
from engines.types import Chunk, GenerationRequest, Message
from gateway.resume import Stops, Transcript, continuation

PROMPT = (5, 6, 7)


def cut_transcript(request: GenerationRequest) -> Transcript:
    transcript = Transcript([request])
    transcript.record(Chunk(0, "", 0, 0, prompt_token_ids=PROMPT))
    transcript.record(Chunk(0, "Hello", 1, 0, token_ids=(10,)))
    transcript.record(Chunk(0, " wor", 2, 0, token_ids=(11, 12)))
    return transcript


def test_a_cut_choice_continues_as_a_completion_of_its_prompt_and_output_ids() -> None:
    chat = GenerationRequest(
        "r1",
        (Message("user", "hi"),),
        max_tokens=10,
        temperature=0.7,
        seed=3,
        n=2,
        stop=("END",),
        options={"top_k": 5, "min_tokens": 2, "chat_template_kwargs": {}},
    )
    transcript = Transcript([chat])
    transcript.record(Chunk(1, "", 0, 0, prompt_token_ids=PROMPT))
    transcript.record(Chunk(1, "Hi", 1, 0, token_ids=(10,)))
    transcript.record(Chunk(0, "x", 1, 0, token_ids=(9,), finish_reason="stop"))
    assert transcript.refusal() is None
    (strand,) = transcript.unfinished()
    assert strand.index == 1

    request = continuation(strand, 1)

    assert request.prompt == (5, 6, 7, 10)
    assert not request.is_chat
    assert (request.max_tokens, request.n, request.resumed) == (9, 1, 1)
    assert request.seed == 4  # vLLM seeds choice j of n > 1 with seed + j
    assert request.stop == ()  # matched by the gateway, across the break
    assert request.options == {"top_k": 5, "min_tokens": 1}
    assert request.temperature == 0.7


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"response_format": {"type": "json_object"}}, "constrains decoding"),
        ({"structured_outputs": {"regex": "a+"}}, "constrains decoding"),
        ({"tools": [{"type": "function"}], "tool_choice": "auto"}, "tool calls"),
        ({"echo": True}, "echo"),
    ],
)
def test_what_cannot_go_on_from_its_tokens_says_why(options: dict[str, object], why: str) -> None:
    request = GenerationRequest("r", "Once", max_tokens=9, options=options)
    refusal = cut_transcript(request).refusal()
    assert refusal is not None
    assert why in refusal


def test_a_backend_that_said_no_token_ids_cannot_be_resumed_from() -> None:
    transcript = Transcript([GenerationRequest("r", "Once")])
    transcript.record(Chunk(0, "Hello", 1, 0))
    assert transcript.refusal() == "the backend did not say the token ids of its output"
    assert cut_transcript(GenerationRequest("r", "Once")).refusal() is None


def feed(stops: Stops, *texts: str, finish: bool = False) -> tuple[str, str | None]:
    out = []
    for tokens, text in enumerate(texts, 1):
        last = finish and tokens == len(texts)
        chunk = stops.feed(Chunk(0, text, 1, 0, finish_reason="length" if last else None), tokens)
        out.append(chunk.text)
        if chunk.finish_reason == "stop":
            return "".join(out), chunk.stop_reason  # type: ignore[return-value]
    return "".join(out), None


def test_a_stop_string_that_spans_the_break_ends_the_answer_there() -> None:
    # The cut backend held back "\n\nUs" (a possible start of the stop); the
    # continuation's "er:" completes it.
    stops = Stops(("\n\nUser:",), held="\n\nUs")
    assert feed(stops, "er:", " more") == ("", "\n\nUser:")


def test_text_that_only_looked_like_a_stop_goes_out_once_it_cannot_be_one() -> None:
    stops = Stops(("\n\nUser:",), held="\n\nUs")
    assert feed(stops, "ually", " fine", finish=True) == ("\n\nUsually fine", None)


def test_the_earliest_completed_stop_wins_and_include_keeps_it() -> None:
    assert feed(Stops(("cd", "b")), "abcde") == ("a", "b")
    assert feed(Stops(("cd", "b"), include=True), "abcde") == ("ab", "b")


def test_stops_wait_for_min_tokens() -> None:
    stops = Stops(("b",), min_tokens=1)
    assert feed(stops, "ab", "cb") == ("abc", "b")  # the first "b" came within min_tokens


def test_vllm_stream_events_give_their_token_ids() -> None:
    reader = EventReader(chat=True)
    role = {
        "prompt_token_ids": [1, 2],
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
    }
    held = {"choices": [{"index": 0, "delta": {}, "token_ids": [7]}]}  # text held back
    text = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "token_ids": [8, 9]}]}
    chunks = [c for payload in (role, held, text) for c in reader.read(payload)]
    assert [(c.text, c.token_ids, c.token_count, c.prompt_token_ids) for c in chunks] == [
        ("", (), 0, (1, 2)),
        ("", (7,), 1, None),
        ("Hi", (8, 9), 2, None),
    ]


def test_a_choice_cut_before_its_first_chunk_has_its_prompt_from_a_sibling() -> None:
    transcript = Transcript([GenerationRequest("r", "Once", n=2)])
    transcript.record(Chunk(0, "A", 1, 0, token_ids=(3,), prompt_token_ids=PROMPT))
    assert [s.prompt_ids for s in transcript.unfinished()] == [PROMPT, PROMPT]
    assert transcript.refusal() is None
