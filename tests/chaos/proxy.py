"""A fault proxy (a test double of a broken network path or a broken replica) in front
of one real `vllm serve`: it relays everything unchanged until told to misbehave.

    pass     relay as is
    error    every generation answers 500 with an error body (health still passes:
             the replica looks alive and fails its requests)
    garbage  every generation answers 200 with bytes that are not OpenAI's format
    cut      relay, then close the connection after the first few body chunks

Health probes (`/health`) and the admin paths are relayed in every mode, so the
gateway's health checks see a live replica and only its generations misbehave.
The proxy runs its own event loop in a thread; `mode` may be changed from any thread.
A client that goes away cancels the relayed request (handler cancellation on), so a
cut gateway connection aborts the generation upstream as a direct one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Literal

import aiohttp
from aiohttp import web

Mode = Literal["pass", "error", "garbage", "cut"]
GENERATIONS = ("/v1/chat/completions", "/v1/completions")
CUT_AFTER_CHUNKS = 3


class FaultProxy:
    def __init__(self, upstream: str, port: int) -> None:
        self.upstream = upstream
        self.port = port
        self.mode: Mode = "pass"
        self.faulted = 0  # generations it broke

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode if request.path in GENERATIONS else "pass"
        body = await request.read()
        if mode == "error":
            self.faulted += 1
            error = {"error": {"message": "injected fault", "type": "InternalServerError"}}
            return web.json_response(error, status=500)
        if mode == "garbage":
            self.faulted += 1
            return web.Response(body=b"\x00<html>not json\xff", content_type="text/plain")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            reply = web.StreamResponse(status=upstream.status)
            reply.headers.update(
                {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
            )
            await reply.prepare(request)
            chunks = 0
            async for chunk in upstream.content.iter_any():
                await reply.write(chunk)
                chunks += 1
                if mode == "cut" and chunks >= CUT_AFTER_CHUNKS:
                    self.faulted += 1
                    assert request.transport is not None
                    request.transport.abort()
                    return reply
            await reply.write_eof()
            return reply

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultProxy]:
        # A gateway that leaves mid-answer is routine here, not worth a traceback.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        loop = asyncio.new_event_loop()
        runner: list[web.AppRunner] = []

        async def start() -> None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner.append(web.AppRunner(app, handler_cancellation=True, access_log=None))
            await runner[0].setup()
            await web.TCPSite(runner[0], "127.0.0.1", self.port).start()

        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        try:
            yield self
        finally:

            async def stop() -> None:
                await runner[0].cleanup()
                await self._session.close()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
