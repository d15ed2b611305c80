"""Following a session from Python: ``async for event in stream_session(url, session_id, token)``.

The helper parses the event stream, remembers the last event id, and after a dropped connection, a
``cut`` event (it fell behind) or a bridge restart reconnects with ``Last-Event-ID`` — so the caller sees
every event exactly once, in order, however often the connection breaks. Authentication errors (401,
403) and bad requests are raised, not retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from streams.bridge.exceptions import BridgeError, Forbidden, Unauthorized

__all__ = ["ServerEvent", "read_events", "stream_events", "stream_session"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event: ``event`` is ``message`` for data events, ``cut``/``error`` for control ones."""

    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerEvent | int]:
    """Parse a text/event-stream body; yields events, and the ``retry:`` value (ms) when one is sent.

    An ``id:``-only frame yields an event with empty data (it moves the resume position, nothing else).
    """
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    seen_id = False
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or seen_id:
                yield ServerEvent(event_id, event_type, "\n".join(data))
            event_type, data, seen_id = "message", [], False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id":
            event_id, seen_id = value, True
        elif name == "retry" and value.isdigit():
            yield int(value)


async def stream_events(url: str, token: str, *, last_event_id: str | None = None, start: str = "latest",
                        session: aiohttp.ClientSession | None = None, max_retry_delay: float = 5.0,
                        ) -> AsyncIterator[dict[str, Any]]:
    """The events (decoded JSON) of any bridge stream URL, resuming by itself after disconnects."""
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
    retry = 1.0
    failures = 0
    try:
        while True:
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            params = {}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            else:
                params["from"] = start
            try:
                async with http.get(url, headers=headers, params=params) as response:
                    if response.status in (401, 403):
                        text = await response.text()
                        raise (Unauthorized if response.status == 401 else Forbidden)(text)
                    if response.status != 200:
                        raise BridgeError(f"bridge answered {response.status}: {await response.text()}")
                    failures = 0
                    async for item in read_events(response):
                        if isinstance(item, int):
                            retry = item / 1000
                            continue
                        if item.id is not None:
                            last_event_id = item.id
                        if item.event == "message" and item.data:
                            yield json.loads(item.data)
                        elif item.event in ("cut", "error"):
                            logger.info("bridge ended the stream (%s); resuming", item.data)
                            break
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                failures += 1
                logger.info("stream dropped (%s); resuming from %s", exc, last_event_id)
            await asyncio.sleep(min(max_retry_delay, retry * (1 if failures < 2 else failures)))
    finally:
        if own:
            await http.close()


async def stream_session(url: str, session_id: str, token: str, *, last_event_id: str | None = None,
                         start: str = "latest", session: aiohttp.ClientSession | None = None,
                         ) -> AsyncIterator[dict[str, Any]]:
    """The TurnEvents of one session from the bridge at ``url`` (e.g. ``http://127.0.0.1:8088``)."""
    stream_url = f"{url.rstrip('/')}/v1/sessions/{quote(session_id, safe='')}/events"
    async for event in stream_events(stream_url, token, last_event_id=last_event_id, start=start, session=session):
        yield event
