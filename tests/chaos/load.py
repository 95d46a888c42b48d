"""The mixed load: chat and completions, streamed and not, base model and adapters,
repeated greedy prompts (cache hits) and unique ones, three keys (one with limits),
both gateways, and clients that leave at random points. Every request is drawn from a
seeded generator and ends as a `Record` of what the client saw."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.chaos.cluster import DECLARED, KEYS, Key
from tests.replicas import MODEL

DEADLINE_S = 90.0  # a request still open after this has hung
# Each client pauses between requests: the load is steady, and leaves the 2 cores
# enough room for a killed replica to start again (starved, vLLM took 5 min).
THINK_S = (0.1, 0.6)
REPEATED = ("Name a colour.", "Say hello.", "Count to three.", "What is 2 + 2?")


@dataclass
class Record:
    index: int
    gateway: int
    key: Key
    path: str
    body: dict[str, Any]
    leave_after: float | None  # chunks (streams) or seconds: the client disconnects
    sent: float = 0.0
    first_byte: float | None = None
    ended: float = 0.0
    status: int = 0
    error: dict[str, Any] | None = None  # the error body, or the stream's error event
    error_after_text: bool = False
    left: bool = False  # the client disconnected as planned
    hung: bool = False
    malformed: str = ""  # a body or event that is not OpenAI's shape
    ids: set[str] = field(default_factory=set)
    text: str = ""
    content_chunks: int = 0
    after_finish: int = 0  # content chunks after the finish chunk
    finishes: int = 0
    usage: dict[str, Any] | None = None
    cache: str = ""
    backend: str = ""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def identity(self) -> str:
        """What the cache keys on, as the client sees it (the stream flag aside)."""
        body = {k: v for k, v in self.body.items() if k not in ("stream", "stream_options")}
        return f"{self.key.label} {self.path} {orjson.dumps(body, option=orjson.OPT_SORT_KEYS)!r}"

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.error is None and self.finishes == 1 and not self.left


def draw(rng: random.Random, index: int, gateways: int) -> Record:
    key = rng.choices(KEYS, weights=(2, 5, 3))[0]
    chat = rng.random() < 0.7
    model = rng.choices((MODEL, *DECLARED), weights=(6, 2, 2))[0]
    leave = rng.random() < 0.1
    repeated = not leave and rng.random() < 0.4
    prompt = rng.choice(REPEATED) if repeated else f"Tell me about the number {index}."
    tokens = 48 if leave else 12 if repeated else rng.randint(4, 24)
    body: dict[str, Any] = {"model": model, "max_tokens": tokens}
    body["temperature"] = 0 if repeated or rng.random() < 0.5 else 0.8
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if rng.random() < 0.5:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    leave_after = None
    if leave:
        leave_after = rng.randint(1, 4) if body.get("stream") else rng.uniform(0.2, 1.5)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return Record(index, rng.randrange(gateways), key, path, body, leave_after)


def _read_choice(record: Record, choice: dict[str, Any], chat: bool, stream: bool) -> str:
    if stream:
        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    else:
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    if choice.get("index") != 0:
        record.malformed = f"choice index {choice.get('index')!r}"
    if text:
        record.content_chunks += 1
        if record.finishes:
            record.after_finish += 1
    if choice.get("finish_reason"):
        record.finishes += 1
    return text or ""


def _error_shaped(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


async def _stream(client: httpx.AsyncClient, record: Record, url: str) -> None:
    chat = record.path.endswith("chat/completions")
    async with client.stream("POST", url, json=record.body, headers=record.key.headers) as r:
        record.status = r.status_code
        record.cache = r.headers.get("x-switchyard-cache", "")
        record.backend = r.headers.get("x-switchyard-backend", "")
        if r.status_code != 200:
            record.first_byte = time.monotonic()
            body = orjson.loads(await r.aread())
            record.error = body if _error_shaped(body) else None
            record.malformed = "" if record.error else f"error body {body!r:.200}"
            return
        events = 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            record.first_byte = record.first_byte or time.monotonic()
            if line == "data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                record.error = event if _error_shaped(event) else None
                record.malformed = "" if record.error else f"error event {event!r:.200}"
                record.error_after_text = bool(record.text)
                continue
            record.ids.add(event["id"])
            if event.get("usage"):
                record.usage = event["usage"]
            for choice in event["choices"]:
                record.text += _read_choice(record, choice, chat, stream=True)
            events += 1
            if record.leave_after is not None and events >= record.leave_after:
                record.left = True
                return


async def _whole(client: httpx.AsyncClient, record: Record, url: str) -> None:
    chat = record.path.endswith("chat/completions")
    request = client.post(url, json=record.body, headers=record.key.headers)
    if record.leave_after is not None:
        try:
            async with asyncio.timeout(record.leave_after):
                r = await request
        except TimeoutError:
            record.left = True
            return
    else:
        r = await request
    record.first_byte = time.monotonic()
    record.status = r.status_code
    record.cache = r.headers.get("x-switchyard-cache", "")
    record.backend = r.headers.get("x-switchyard-backend", "")
    body = orjson.loads(r.content)
    if r.status_code != 200:
        record.error = body if _error_shaped(body) else None
        record.malformed = "" if record.error else f"error body {body!r:.200}"
        return
    record.ids.add(body["id"])
    record.usage = body.get("usage")
    for choice in body["choices"]:
        record.text += _read_choice(record, choice, chat, stream=False)


async def _one(client: httpx.AsyncClient, record: Record, gateways: list[str]) -> None:
    url = gateways[record.gateway] + record.path
    record.sent = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE_S):
            await (_stream if record.stream else _whole)(client, record, url)
    except TimeoutError:
        record.hung = True
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        record.malformed = f"{type(exc).__name__}: {exc}"
    record.ended = time.monotonic()


async def run_load(
    gateways: list[str],
    seed: int,
    keep_going: Callable[[], bool],
    held: Callable[[], bool] = lambda: False,
    concurrency: int = 6,
) -> list[Record]:
    """Send requests from `concurrency` clients while `keep_going()`; none starts
    while `held()`."""
    rng = random.Random(f"{seed}:load")
    records: list[Record] = []
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=DEADLINE_S, limits=limits) as client:

        async def client_loop() -> None:
            while keep_going():
                if held():
                    await asyncio.sleep(0.2)
                    continue
                record = draw(rng, len(records), len(gateways))
                records.append(record)
                await _one(client, record, gateways)
                await asyncio.sleep(rng.uniform(*THINK_S))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return records
