"""Any OpenAI-compatible server (`vllm serve`, SGLang, llama.cpp) as an engine.

One `aiohttp.ClientSession` per upstream, with a keep-alive pool and four explicit
timeouts: connect; first token (request sent → first streamed event, which covers the
upstream's own queue and the prefill, with or without headers sent); idle (between
events, from the first on); total (a stream, and every whole answer or admin call).
aiohttp's own read timeout stays off: it would run from the request on, and cut a
first event that comes later than the idle timeout. A streamed request streams from
the upstream with usage; a non-streamed one is forwarded whole (so the upstream's own
tool-call and reasoning parsing answers it as `vllm serve` would). A whole answer has
no events to time, so while it is awaited the upstream must keep answering its
`health_path`: asked each idle_timeout_s, it answers within idle_timeout_s or the
answer is given up (EngineUnavailable, retried elsewhere). A frozen upstream is thus
left after at most twice the idle timeout, not after total_timeout_s.

Upstream failures map onto the engine error tree (engines/errors.py):

    connect refused or timed out          → EngineUnreachable  (ejected at once)
    the server hung up or reset           → EngineDisconnected (ejected at once: the
                                                                process went away)
    a timeout (see above)                 → EngineTimedOut     (retried elsewhere,
                                                                within the retry budget)
    429                                   → EngineOverloaded   (retried elsewhere)
    404 naming an adapter loaded there    → AdapterMissing     (it restarted: retried
                                                                elsewhere, restored)
    424 (TGI's generation error)          → GenerationFailed
    401/403/404/408/5xx, timeouts, a cut  → EngineUnavailable  (retried while nothing
    stream, a malformed event, vLLM's                           reached the client,
    finish_reason "abort"                                       resumed after)
    400, 422                              → InvalidGenerationRequest (the client's)
    an error event in the stream          → GenerationFailed

Embeddings, `/tokenize` and `/detokenize` are forwarded as they are (`model` set to
the upstream's name) and answered whole, with the same failure mapping; `serves`
says whether the upstream serves generation, embeddings (`vllm serve --runner
pooling`) or both, and a request for what it does not serve is refused before it is sent.

Adapters go through vLLM's runtime LoRA endpoints (the server needs
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) under a content-addressed name,
`name@digest12`: two gateways sharing a server agree on it, and a changed adapter
never reuses the old version's name. A server that restarts comes back without them;
while it holds adapters from here, `health()` also reads its `/v1/models` (a small
listing every OpenAI-compatible server has, that vLLM fills with its runtime-loaded
adapters) and reports a new `Health.instance` once one of them is missing there, so
the gateway loads them again. Neither vLLM's `/health` nor its `/v1/models` says
anything that names the process, and its `/metrics` is large and, in its
multiprocess mode, has no `process_start_time_seconds`: the adapters' absence is the
one signal that is both cheap and about what a restart loses.

aiohttp rather than httpx: streaming the same completions from the same upstream,
httpx spent 14x the client CPU per request at concurrency 64 (`switchyard bench
http-clients`, docs/benchmarks/http_clients.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp
import orjson

from engines.errors import (
    AdapterMissing,
    EngineDisconnected,
    EngineError,
    EngineOverloaded,
    EngineTimedOut,
    EngineUnavailable,
    EngineUnreachable,
    GenerationFailed,
    InvalidGenerationRequest,
    upstream_refusal,
)
from engines.openai_wire import (
    EventParser,
    EventReader,
    Reader,
    error_text,
    openai_body,
    read_burst,
    response_chunks,
)
from engines.options import blame_field
from engines.tasks import require
from engines.types import (
    LORA_TARGETS,
    Adapter,
    AdapterSupport,
    Chunk,
    EngineStats,
    GenerationRequest,
    Health,
    Task,
)

_JSON = {"Content-Type": "application/json"}
T = TypeVar("T")
Limit = Literal["first_token_timeout_s", "idle_timeout_s", "total_timeout_s"]


@dataclass(frozen=True, slots=True)
class OpenAIRemoteConfig:
    url: str
    upstream_model: str | None = None
    api_key_env: str | None = None
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 120.0
    idle_timeout_s: float = 60.0
    total_timeout_s: float = 900.0
    max_connections: int = 512
    health_path: str = "/health"
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    lora_target_modules: tuple[str, ...] = tuple(sorted(LORA_TARGETS))
    serves: tuple[Task, ...] = ("generate",)  # ("embed",) for `vllm serve --runner pooling`
    # Ask streams for their token ids (vLLM's `return_token_ids`), which resuming a
    # cut stream elsewhere needs; off for a server that refuses fields it lacks.
    token_ids: bool = True

    __pydantic_config__ = {"extra": "forbid"}


class OpenAIRemoteEngine:
    Config = OpenAIRemoteConfig

    def __init__(self, name: str, model_id: str, config: OpenAIRemoteConfig) -> None:
        self.name = name
        self.model_id = model_id
        self.config = config
        self.root = config.url.rstrip("/").removesuffix("/v1")
        self.serves: frozenset[Task] = frozenset(config.serves)
        self.weights: str | None = None  # the upstream server holds them
        self.adapter_support = (
            AdapterSupport(
                max_rank=config.max_lora_rank,
                max_loaded=config.max_loras,
                target_modules=frozenset(config.lora_target_modules),
            )
            if config.enable_lora
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self._versions: dict[int, Adapter] = {}  # by engine_id
        self._running = 0
        self._restarts = 0  # times the upstream was found without adapters loaded there
        self._context: int | None = None  # the upstream's context, once asked (`context`)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool. The upstream may still be starting: whether it
        answers is the health probe's business, not a reason to fail here."""
        config = self.config
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise EngineUnavailable(
                    f"engine {self.name!r}: the environment variable {config.api_key_env} "
                    "holding the upstream's API key is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=config.max_connections),
            read_bufsize=READ_BUFFER,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=config.first_token_timeout_s,  # waiting for a pooled connection
                sock_connect=config.connect_timeout_s,
            ),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> Health:
        try:
            async with self._http().get(self.root + self.config.health_path) as response:
                status = response.status
            if status == 200 and await self.lost_adapters():
                self._restarts += 1
        except (aiohttp.ClientError, TimeoutError, EngineUnavailable) as exc:
            return Health(ok=False, detail=describe(exc))
        if status != 200:
            return Health(ok=False, detail=f"{self.config.health_path} answered {status}")
        return Health(ok=True, instance=str(self._restarts))

    async def lost_adapters(self) -> bool:
        """Whether the upstream no longer lists an adapter loaded there from here (it
        restarted). Asks only while there are some; a listing it cannot give says no."""
        loaded = {upstream_name(adapter) for adapter in self._versions.values()}
        if not loaded:
            return False
        listing = await self.get("/v1/models")
        payload = listing.json if listing.status == 200 else None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            return False
        listed = {card.get("id") for card in payload["data"] if isinstance(card, dict)}
        return not loaded <= listed

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, unfinished=self._running)

    # -- adapters --------------------------------------------------------------------

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        return {a.name: a for a in self._versions.values()}

    async def load_adapter(self, adapter: Adapter) -> None:
        body = {"lora_name": upstream_name(adapter), "lora_path": adapter.path}
        reply = await self._admin("/v1/load_lora_adapter", body)
        if reply.status == 200 or "already" in reply.text:
            self._versions[adapter.engine_id] = adapter
            return
        if reply.status == 404:
            raise InvalidGenerationRequest(
                f"{self.root} has no runtime LoRA endpoint: start it with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
            )
        if reply.status >= 500:
            raise EngineUnavailable(f"{self.root} failed to load the adapter: {reply.message}")
        raise InvalidGenerationRequest(f"{self.root} refused the adapter: {reply.message}")

    async def unload_adapter(self, adapter: Adapter) -> None:
        self._versions.pop(adapter.engine_id, None)
        with contextlib.suppress(EngineUnavailable):
            await self._admin("/v1/unload_lora_adapter", {"lora_name": upstream_name(adapter)})

    async def _admin(self, path: str, body: dict[str, Any]) -> Reply:
        return await self._within(self._post(path, body), "total_timeout_s")

    async def ask(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer to a small request (GET without `body`) within
        total_timeout_s; a refusal is the engine error it says."""
        step = self.get(path) if body is None else self._post(path, body)
        reply = await self._within(step, "total_timeout_s")
        if reply.status >= 400:
            raise self.refusal(reply, body or {})
        return reply.json

    async def get(self, path: str) -> Reply:
        """GET `path`: a small answer (a listing, the server's info)."""
        async with self._http().get(self.root + path) as response:
            return Reply(response.status, await read_bounded(response, MAX_ERROR_BYTES * 16))

    async def _post(self, path: str, body: Mapping[str, Any]) -> Reply:
        async with self._http().post(
            self.root + path, data=orjson.dumps(body), headers=_JSON
        ) as response:
            limit = MAX_ERROR_BYTES if response.status >= 400 else MAX_ANSWER_BYTES
            content = await read_bounded(response, limit)
            if len(content) > limit and response.status < 400:
                raise EngineUnavailable(f"{self.root} sent an answer over {limit} bytes")
            return Reply(response.status, content[:limit])

    # -- generation ------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        endpoint = "chat" if request.is_chat else "completions"
        require(self.model_id, self.serves, "generate", endpoint)
        self._running += 1
        try:
            path, body, reader = self.prepare(await self.fitted(request))
            if not body.get("stream"):
                for chunk in response_chunks(await self.post(path, body), reader.chat):
                    yield self._checked(chunk, request.n)
                return
            async with contextlib.aclosing(self.stream_events(path, body)) as bursts:
                async for payloads in bursts:
                    chunks, failure = read_burst(reader, payloads)
                    for chunk in chunks:
                        yield self._checked(chunk, request.n)
                    if failure is not None:
                        raise failure
            for chunk in reader.finish():
                yield chunk
        except InvalidGenerationRequest as exc:
            blame_field(exc, request)
            raise
        finally:
            self._running -= 1

    def _checked(self, chunk: Chunk, n: int) -> Chunk:
        if not (isinstance(chunk.index, int) and 0 <= chunk.index < n):
            raise EngineUnavailable(f"{self.root} sent choice index {chunk.index!r} for n={n}")
        return chunk

    async def fitted(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with a default max_tokens fitted to the context: no larger than
        the upstream's (`context`), since vLLM refuses a max_tokens over max_model_len
        and lowers one that fits to what the prompt leaves by itself. An upstream that
        does not say its context gets the default as it is."""
        if not (request.fit_max_tokens and request.max_tokens):
            return request
        try:
            context = await self.context()
        except EngineError:
            return request  # asked again next time; the upstream judges this one
        if 0 < context < request.max_tokens:
            return dataclasses.replace(request, max_tokens=context)
        return request

    async def context(self) -> int:
        """The upstream's context in tokens, asked once (`read_context`); 0: unsaid."""
        if self._context is None:
            self._context = await self.read_context()
        return self._context

    async def read_context(self) -> int:
        """vLLM's `max_model_len`, from the upstream model's card in `/v1/models`."""
        listing = await self.ask("/v1/models")
        cards = listing.get("data") if isinstance(listing, dict) else None
        model = self.upstream_model(None)
        for card in cards if isinstance(cards, list) else ():
            if isinstance(card, dict) and card.get("id") == model:
                value = card.get("max_model_len")
                return value if isinstance(value, int) and not isinstance(value, bool) else 0
        return 0

    def prepare(self, request: GenerationRequest) -> tuple[str, dict[str, Any], Reader]:
        """The upstream path, the JSON body and the event reader."""
        model = self.upstream_model(request.adapter)
        path, body = openai_body(request, model, self.config.token_ids)
        return path, body, EventReader(chat=request.is_chat)

    def upstream_model(self, adapter: Adapter | None) -> str:
        if adapter is not None:
            return upstream_name(adapter)
        return self.config.upstream_model or self.model_id

    # -- embeddings and tokens ---------------------------------------------------------

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        require(self.model_id, self.serves, "embed", "embeddings")
        return await self._forward("/v1/embeddings", body, adapter, "data")

    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        return await self._forward("/tokenize", body, adapter, "tokens")

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        return await self._forward("/detokenize", body, adapter, "prompt")

    async def _forward(
        self, path: str, body: Mapping[str, Any], adapter: Adapter | None, expect: str
    ) -> dict[str, Any]:
        """POST `body` under the upstream's model name; the answer must carry `expect`."""
        named = {**body, "model": self.upstream_model(adapter)}
        self._running += 1
        try:
            return await self.post_json(path, named, expect)
        finally:
            self._running -= 1

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` for a whole (non-streamed) answer."""
        payload = await self.post_json(path, body, "choices")
        if not isinstance(payload["choices"], list):
            raise EngineUnavailable(f"{self.root} sent a malformed answer: {str(payload)[:200]!r}")
        return payload

    async def post_json(self, path: str, body: dict[str, Any], expect: str) -> dict[str, Any]:
        """POST `body` within total_timeout_s while the upstream stays alive; the answer
        is a JSON object with a field `expect`, else the upstream is broken
        (EngineUnavailable)."""
        reply = await self._while_alive(self._post(path, body))
        if reply.status >= 400:
            raise self.refusal(reply, body)
        payload = reply.json
        if not isinstance(payload, dict) or payload.get(expect) is None:
            raise EngineUnavailable(f"{self.root} sent a malformed answer: {reply.text[:200]!r}")
        return payload

    async def stream_events(
        self, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """POST `body` and yield the JSON of the SSE `data:` events until `[DONE]`, those
        that arrived together in one list, with the timeouts applied and failures mapped
        onto the engine errors."""
        config = self.config
        first = asyncio.get_running_loop().time() + config.first_token_timeout_s
        deadline = time.monotonic() + config.total_timeout_s
        post = self._http().post(self.root + path, data=orjson.dumps(body), headers=_JSON)
        response = await self._within(post, "first_token_timeout_s", first)
        try:
            if response.status >= 400:
                content = await self._within(
                    read_bounded(response, MAX_ERROR_BYTES), "first_token_timeout_s", first
                )
                raise self.refusal(Reply(response.status, content), body)
            events = EventParser(max_line=READ_BUFFER * 2)
            limit: Limit = "first_token_timeout_s"
            until: float | None = first
            while not events.done:
                data = await self._within(response.content.readany(), limit, until)
                if not data:
                    return  # the end of the body without [DONE]: the reader tells it cut
                payloads = events.feed(data)
                if not payloads:
                    continue
                yield payloads
                limit, until = "idle_timeout_s", None
                if time.monotonic() > deadline:
                    raise EngineTimedOut(
                        f"{self.root} did not finish within total_timeout_s="
                        f"{config.total_timeout_s}"
                    )
            # Read the end of the body so the connection can be reused.
            with contextlib.suppress(EngineError):
                await self._within(response.content.read(), "idle_timeout_s")
        finally:
            # A stream left early closes its connection, which aborts the upstream's
            # generation; a finished one goes back to the pool.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    def refusal(self, reply: Reply, body: Mapping[str, Any]) -> EngineError:
        """The upstream's error status as an engine error (`status_error`); a 404 for
        an adapter loaded there from here says the upstream lost it: it restarted."""
        model = body.get("model")
        if reply.status == 404 and any(upstream_name(a) == model for a in self._versions.values()):
            return AdapterMissing(f"{self.root} lost adapter {model!r}: {reply.message}")
        return status_error(reply, self.root)

    async def _within(self, step: Awaitable[T], limit: Limit, until: float | None = None) -> T:
        """`step` by `until` (loop time), or else within the `limit` setting's seconds
        from now; running out, or the connection failing, is the engine error saying
        which."""
        if until is None:
            until = asyncio.get_running_loop().time() + getattr(self.config, limit)
        try:
            async with asyncio.timeout_at(until):
                return await step
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):  # aiohttp's own: connecting
                raise transport_error(exc, self.root) from None
            seconds = getattr(self.config, limit)
            raise EngineTimedOut(f"{self.root} sent nothing within {limit}={seconds}") from None
        except aiohttp.ClientError as exc:
            raise transport_error(exc, self.root) from None

    async def _while_alive(self, step: Awaitable[T]) -> T:
        """`step` within total_timeout_s, given up earlier if the upstream stops
        answering `health_path` (asked each idle_timeout_s once `step` has waited that
        long: most answers come sooner, and cost no second task)."""
        loop = asyncio.get_running_loop()
        waiting = asyncio.current_task()
        assert waiting is not None
        dead: list[EngineError] = []
        pinger: asyncio.Task[None] | None = None

        def start() -> None:
            nonlocal pinger
            pinger = loop.create_task(self._pinging(waiting, dead))

        timer = loop.call_later(self.config.idle_timeout_s, start)
        try:
            return await self._within(step, "total_timeout_s")
        except asyncio.CancelledError:
            if dead and waiting.uncancel() == 0:
                raise dead[0] from None
            raise
        finally:
            timer.cancel()
            if pinger is not None:
                pinger.cancel()

    async def _pinging(self, waiting: asyncio.Task[Any], dead: list[EngineError]) -> None:
        """Ask `health_path` each idle_timeout_s; the first failure cancels `waiting`,
        which raises it (`dead`)."""
        while True:
            try:
                await self._within(self._ping(), "idle_timeout_s")
            except EngineError as exc:
                dead.append(exc)
                waiting.cancel()
                return
            await asyncio.sleep(self.config.idle_timeout_s)

    async def _ping(self) -> None:
        async with self._http().get(self.root + self.config.health_path) as response:
            if response.status >= 500:
                raise EngineUnavailable(
                    f"{self.root} answered {response.status} on {self.config.health_path}"
                    " while a whole answer was awaited"
                )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineUnavailable(f"engine {self.name!r} is not started")
        return self._session


def upstream_name(adapter: Adapter) -> str:
    return f"{adapter.name}@{adapter.digest[:12]}"


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream's non-streamed answer (errors, admin calls)."""

    status: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            return None

    @property
    def message(self) -> str:
        payload = self.json
        if isinstance(payload, dict):
            if "error" in payload:
                return error_text(payload)
            if "message" in payload:  # vLLM's older error shape
                return str(payload["message"])
        return self.text[:500] or f"HTTP {self.status}"

    @property
    def param(self) -> str | None:
        payload = self.json
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            param = payload["error"].get("param")
            # vLLM's server names fields its FastAPI layer refused "body.<field>".
            return str(param).removeprefix("body.") if param else None
        return None


READ_BUFFER = 2**20
MAX_ERROR_BYTES = 64 * 1024  # of an error body, what is read (and quoted at most)
MAX_ANSWER_BYTES = 256 * 2**20  # a whole answer larger than this is the upstream's fault


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, read until its end or past `limit` bytes (then `limit` + a chunk)."""
    parts: list[bytes] = []
    size = 0
    async for part in response.content.iter_chunked(65536):
        parts.append(part)
        size += len(part)
        if size > limit:
            break
    return b"".join(parts)


def transport_error(exc: BaseException, where: str) -> EngineError:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return EngineUnreachable(f"cannot connect to {where}: {describe(exc)}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return EngineDisconnected(f"the connection to {where} broke: {describe(exc)}")
    return EngineUnavailable(f"the connection to {where} broke: {describe(exc)}")


def status_error(reply: Reply, where: str) -> EngineError:
    status = reply.status
    if status == 429:
        return EngineOverloaded(f"{where} is overloaded (429): {reply.message}")
    if status in (400, 422):
        return upstream_refusal(reply.message, reply.param)
    if status == 424:  # TGI: the model failed while generating
        return GenerationFailed(f"{where} failed to generate: {reply.message}")
    return EngineUnavailable(f"{where} answered {status}: {reply.message}")


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
