"""A broken dependency for fault injection: an HTTP server whose every reply the test chooses.

It stands where the LLM, the embeddings endpoint or Qdrant would be and answers what a broken
server, proxy or load balancer answers: a 500 with an HTML page, a 200 that is not JSON, JSON of
the wrong shape, vectors of the wrong size or with NaN, an SSE stream cut in the middle. With an
``upstream`` it forwards every request to the real server and lets ``rewrite`` spoil the real reply,
so a correct answer is always the real dependency's, never one made up here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from connectors.broker import free_port

__all__ = ["FaultyServer", "Reply"]

logger = logging.getLogger(__name__)

#: Answers one request; ``None`` means "forward it to the upstream unchanged".
Reply = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class FaultyServer:
    """``reply`` decides each answer; ``requests`` counts what arrived (path of each)."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.port = free_port()
        self.reply: Reply | None = None
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def forward(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        """The upstream's answer to ``request``: status, headers, body."""
        assert self.upstream is not None and self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with self._session.request(request.method, f"{self.upstream}{request.path_qs}", data=body,
                                         headers=headers) as response:
            content = await response.read()
            kept = {k: v for k, v in response.headers.items() if k.lower() == "content-type"}
            return response.status, kept, content

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        reply = self.reply
        if reply is not None:
            answer = await reply(request)
            if answer is not None:
                return answer
        if self.upstream is None:
            return web.Response(status=404, text="no reply set")
        status, headers, body = await self.forward(request)
        return web.Response(status=status, headers=headers, body=body)


def status(code: int, body: str, content_type: str = "text/html") -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=code, text=body, content_type=content_type)
    return reply


def sse(events: list[str], cut: bool = False) -> Reply:
    """A 200 SSE stream of these ``data:`` payloads; ``cut`` drops the connection instead of ending it."""
    async def reply(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(f"data: {event}\n\n".encode())
            await asyncio.sleep(0.01)
        if cut:
            assert request.transport is not None
            request.transport.abort()  # mid-stream, no terminating chunk
            return response
        await response.write_eof()
        return response
    return reply


def hang() -> Reply:
    """Never answers (until the client gives up)."""
    async def reply(request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
    return reply
