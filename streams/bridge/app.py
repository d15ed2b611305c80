"""The bridge's aiohttp application: event streams, turn submission, health, metrics, the web page.

Endpoints:

- ``GET /v1/sessions/{session_id}/events`` — the TurnEvents of one session of the caller's tenant.
- ``GET /v1/streams/{name}`` — another result topic (``embedding-results``, ``lock-state``,
  ``usage-reports``, ``conversation-events``, or its topic name), filtered to the caller's tenant and,
  with ``?key=``, to one key. ``?tenant=`` may only name the caller's own tenant (else 403).
- ``POST /v1/turns`` — validate a ConversationTurn (tenant from the token), produce it, answer 202 with
  the turn id and the stream URL (which carries a cursor taken before the turn was produced, so no answer
  event can be missed whenever the client connects).
- ``GET /healthz`` (process up), ``/readyz`` (reader running, broker answering), ``/metrics``.
- ``GET /`` — the conversation web page.

Streams take ``?from=earliest|latest`` on a first connect, ``Last-Event-ID`` (or ``?cursor=``) to resume.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from schemas import ConversationTurn, SchemaError, encode_event
from schemas.codec import validation_reason
from streams.bridge.auth import SCOPE_EVENTS_READ, SCOPE_TURNS_WRITE, Principal, TokenVerifier
from streams.bridge.exceptions import BridgeError, CatchUpFailed, Unauthorized
from streams.bridge.fanout import CUT, Cursor, Delivery, FanOut, Subscriber
from streams.bridge.metrics import BridgeMetrics
from streams.catalog import CONVERSATION_EVENTS, CONVERSATION_TURNS, EMBEDDING_RESULTS, LOCK_STATE, USAGE_REPORTS
from streams.kafka import producer_factory
from streams.settings import Settings

__all__ = ["RESULT_TOPICS", "STREAM_NAMES", "create_app"]

logger = logging.getLogger(__name__)

RESULT_TOPICS = [CONVERSATION_EVENTS, EMBEDDING_RESULTS, LOCK_STATE, USAGE_REPORTS]
STREAM_NAMES = {
    "conversation-events": CONVERSATION_EVENTS.name,
    "embedding-results": EMBEDDING_RESULTS.name,
    "lock-state": LOCK_STATE.name,
    "usage-reports": USAGE_REPORTS.name,
} | {spec.name: spec.name for spec in RESULT_TOPICS}
TOKEN_COOKIE = "soma_token"
#: Queued events written to a client in one write call.
_WRITE_BATCH = 64

SETTINGS = web.AppKey("settings", Settings)
FANOUT = web.AppKey("fanout", FanOut)
VERIFIER = web.AppKey("verifier", TokenVerifier)
METRICS = web.AppKey("metrics", BridgeMetrics)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
LAG_TASK = web.AppKey("lag_task", asyncio.Task)


# -- auth, errors, CORS ----------------------------------------------------------------------------------


def _principal(request: web.Request, *, allow_query: bool) -> Principal:
    header = request.headers.get("Authorization", "")
    token: str | None = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization header must be 'Bearer <jwt>'")
        token = value.strip()
    elif allow_query and request.query.get("access_token"):
        token = request.query["access_token"]
    elif request.cookies.get(TOKEN_COOKIE):
        token = request.cookies[TOKEN_COOKIE]
    return request.app[VERIFIER].verify(token)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except BridgeError as exc:
        if exc.status in (401, 403):
            request.app[METRICS].auth_failures.labels(str(exc.status)).inc()
        headers = {"WWW-Authenticate": 'Bearer realm="soma"'} if exc.status == 401 else {}
        return web.json_response({"error": str(exc)}, status=exc.status, headers=headers)


@web.middleware
async def _preflight(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        origin = _allowed_origin(request)
        if origin is None:
            return web.Response(status=403, text="origin not allowed")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })
    return await handler(request)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS].bridge_cors_origins
    if origin and (origin in allowed or "*" in allowed):
        return origin
    return None


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"


# -- event streams -----------------------------------------------------------------------------------------


async def session_events(request: web.Request) -> web.StreamResponse:
    return await _stream(request, CONVERSATION_EVENTS.name, request.match_info["session_id"])


async def named_stream(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    topic = STREAM_NAMES.get(name)
    if topic is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no stream {name!r}; streams: {sorted(STREAM_NAMES)}"}),
                               content_type="application/json")
    return await _stream(request, topic, request.query.get("key") or None)


def _frame(cursor: Cursor, delivery: Delivery) -> bytes:
    return b"id: " + cursor.encode().encode() + b"\ndata: " + delivery.data + b"\n\n"


def _control(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


async def _stream(request: web.Request, topic: str, key: str | None) -> web.StreamResponse:
    settings, fanout, metrics = request.app[SETTINGS], request.app[FANOUT], request.app[METRICS]
    principal = _principal(request, allow_query=True)
    principal.require(SCOPE_EVENTS_READ)
    if "tenant" in request.query:
        principal.require_tenant(request.query["tenant"])
    start = request.query.get("from", "latest")
    if start not in ("earliest", "latest"):
        raise web.HTTPBadRequest(text=json.dumps({"error": "from must be 'earliest' or 'latest'"}),
                                 content_type="application/json")
    last_id = request.headers.get("Last-Event-ID") or request.query.get("cursor")
    cursor = Cursor.decode(last_id, topic) if last_id else None

    subscriber = Subscriber(topic, principal.tenant, key, settings.bridge_client_buffer)
    backlog = fanout.subscribe(subscriber, cursor, start)
    metrics.clients.inc()
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    write_timeout = settings.bridge_write_timeout_seconds

    async def write(data: bytes) -> None:
        async with asyncio.timeout(write_timeout):
            await response.write(data)

    sent = 0
    try:
        await response.prepare(request)
        await write(f"retry: {settings.bridge_retry_ms}\nid: {subscriber.cursor.encode()}\n\n".encode())
        if backlog.from_memory:
            metrics.resumes.labels("memory").inc()
            chunk = bytearray()
            for delivery in backlog.from_memory:
                if subscriber.accepts(delivery):
                    chunk += _frame(subscriber.cursor, delivery)
                    sent += 1
            await write(bytes(chunk))
        if backlog.from_kafka:
            metrics.resumes.labels("kafka").inc()
            try:
                async for delivery in fanout.read_backlog(subscriber, backlog.from_kafka):
                    if subscriber.accepts(delivery):
                        await write(_frame(subscriber.cursor, delivery))
                        sent += 1
            except CatchUpFailed as exc:
                logger.warning("resume failed: %s", exc)
                await write(_control("error", {"reason": str(exc), "retry": True}))
                return response
        heartbeat = settings.bridge_heartbeat_seconds
        queue = subscriber.queue
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    item = await queue.get()
            except TimeoutError:
                await write(b": keep-alive\n\n")
                continue
            chunk = bytearray()
            now = time.monotonic()
            while True:
                if item is CUT:
                    chunk += _control("cut", {"reason": subscriber.cut_reason, "retry": True})
                    await write(bytes(chunk))
                    return response
                assert isinstance(item, Delivery)
                if subscriber.accepts(item):
                    chunk += _frame(subscriber.cursor, item)
                    metrics.delivery_seconds.observe(now - item.read_at)
                    sent += 1
                if queue.empty() or len(chunk) > 256 * 1024 or sent % _WRITE_BATCH == 0:
                    break
                item = queue.get_nowait()
            if chunk:
                await write(bytes(chunk))
    except TimeoutError:
        fanout.cut(subscriber, f"a write blocked for more than {write_timeout} s")
        logger.info("closing a client whose writes block")
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:
        pass  # the client went away (a cancelled handler — also a client gone — propagates after cleanup)
    finally:
        fanout.unsubscribe(subscriber)
        metrics.clients.dec()
        metrics.events_sent.inc(sent)
        metrics.index_buckets.set(len(fanout.index))
    return response


# -- turns -------------------------------------------------------------------------------------------------


async def post_turn(request: web.Request) -> web.Response:
    principal = _principal(request, allow_query=False)
    principal.require(SCOPE_TURNS_WRITE)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    if "tenant" in body:
        principal.require_tenant(str(body["tenant"]))
    body["tenant"] = principal.tenant
    body.setdefault("user", principal.subject or "anonymous")
    try:
        turn = ConversationTurn.model_validate(body)
    except ValidationError as exc:
        return web.json_response({"error": validation_reason("ConversationTurn", exc)}, status=422)
    except SchemaError as exc:
        return web.json_response({"error": exc.reason}, status=422)
    events = CONVERSATION_EVENTS.name
    # Taken before the turn is produced: every answer event lies after this position.
    cursor = Cursor(events, dict(request.app[FANOUT].live[events])).encode()
    try:
        await request.app[PRODUCER].send_and_wait(CONVERSATION_TURNS.name, key=turn.session_id.encode(),
                                                  value=encode_event(turn))
    except Exception as exc:
        logger.warning("could not produce a turn: %s", exc)
        return web.json_response({"error": f"broker unavailable: {exc}"}, status=503)
    request.app[METRICS].turns_posted.inc()
    url = f"/v1/sessions/{quote(turn.session_id, safe='')}/events?cursor={quote(cursor, safe='')}"
    return web.json_response({"turn_id": turn.event_id, "session_id": turn.session_id, "cursor": cursor,
                              "stream_url": url}, status=202, headers={"Location": url})


# -- health, metrics, page ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = await request.app[FANOUT].ready()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.index_buckets.set(len(request.app[FANOUT].index))
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index_page(request: web.Request) -> web.Response:
    html = files("streams.bridge").joinpath("static/index.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html")


# -- assembly ----------------------------------------------------------------------------------------------


def create_app(settings: Settings) -> web.Application:
    """The bridge application; the reader and the producer start with it and stop with it.

    Call it from a running event loop (the Kafka clients are made here).
    """
    verifier = TokenVerifier(settings)  # fails at once on missing or conflicting key settings
    app = web.Application(middlewares=[_preflight, _errors])
    metrics = BridgeMetrics()
    app[SETTINGS] = settings
    app[VERIFIER] = verifier
    app[METRICS] = metrics
    app[FANOUT] = FanOut(settings, RESULT_TOPICS, metrics)
    app[PRODUCER] = producer_factory(settings, client_id=f"{settings.app_id}-bridge", linger_ms=0)
    app.on_response_prepare.append(_cors_headers)
    app.on_startup.append(_start)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    app.router.add_get("/", index_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/v1/sessions/{session_id}/events", session_events)
    app.router.add_get("/v1/streams/{name}", named_stream)
    app.router.add_post("/v1/turns", post_turn)
    return app


async def _start(app: web.Application) -> None:
    await app[FANOUT].start()
    await app[PRODUCER].start()
    app[LAG_TASK] = asyncio.create_task(_watch_loop_lag(app[METRICS]), name="bridge-loop-lag")


async def _watch_loop_lag(metrics: BridgeMetrics, interval: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.loop_lag_seconds.observe(max(0.0, loop.time() - due))


async def _shutdown(app: web.Application) -> None:
    """Tell every client to go elsewhere (their ids stay valid on any bridge), so handlers end now."""
    fanout = app[FANOUT]
    for bucket in list(fanout.index.values()):
        for subscriber in list(bucket):
            fanout.cut(subscriber, "bridge shutting down")


async def _cleanup(app: web.Application) -> None:
    app[LAG_TASK].cancel()
    await app[FANOUT].stop()
    await app[PRODUCER].stop()
