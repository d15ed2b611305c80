"""A turn and an embedding job processed twice are counted once in usage (real broker, real llama.cpp model
server, the real embedding model and Qdrant local mode, real worker processes).

Processing twice is what a crash replay does (the answer and its usage event were sent, the ``seen``
mark was not yet durable) and what a worker that lost its tables does: here a second worker with a fresh
app id (new consumer groups, empty tables) reads the same turn and job again. Its usage agent reads
both generations of usage events; they carry the same deterministic ids, so it counts each once.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.broker import free_port
from schemas import UsageEvent, decode_event
from streams.catalog import USAGE_EVENTS
from tests.integration.conftest import Stack, TurnClient, write_test_prices
from tests.support.embedding_client import EmbeddingClient
from tests.support.stack import TopicReader

pytestmark = pytest.mark.integration


def http_json(port: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def open_hour_events(body: dict[str, Any]) -> dict[str, int]:
    """Events per kind in the tenant's open hour windows."""
    counts: dict[str, int] = {}
    for window in body.get("open_windows", []):
        if window["window"] == "hour":
            for group in window["groups"]:
                counts[group["kind"]] = counts.get(group["kind"], 0) + group["events"]
    return counts


async def test_a_turn_and_a_job_processed_twice_are_counted_once(
    tmp_path: Path, model_server: Any, stack_factory: Any, turn_client_factory: Any
) -> None:
    stack: Stack = stack_factory()  # set up before the turn client, so its readers stop before the broker
    env = {
        "OPENAI_BASE_URL": model_server.base_url,
        "SOMA_LLM_PROVIDER": "llama.cpp",
        "SOMA_PRICES_FILE": str(write_test_prices(tmp_path)),
        "SOMA_USAGE_IDLE_CLOSE_SECONDS": "0",  # windows stay open: the HTTP view shows their counts
    }
    tenant = f"replay-{uuid.uuid4().hex[:8]}"
    usage_reader = jobs = None
    try:
        first = stack.worker(SOMA_WEB_PORT=str(free_port()), **env)
        for agent in ("conversation", "embeddings", "usage"):
            first.wait_ready(agent, timeout=180)
        usage_reader = await TopicReader(stack.bootstrap, USAGE_EVENTS.name).start()
        jobs = await EmbeddingClient(stack.bootstrap).start()
        turns: TurnClient = await turn_client_factory(stack.bootstrap)
        turn, final = await turns.ask({"tenant": tenant, "session_id": f"s-{uuid.uuid4().hex[:8]}", "user": "ann",
                                       "prompt": "Name a colour.", "max_tokens": 8, "temperature": 0})
        assert final.type == "completed", final.error
        job_id, = await jobs.send({"tenant": tenant, "job": "upsert", "collection": "notes",
                                   "documents": [{"id": "d1", "text": "Cats doze on warm windowsills."}]})
        assert (await jobs.result(job_id, timeout=120)).status == "ok"

        def usage_of(source: str) -> list[UsageEvent]:
            events = (decode_event(r.value or b"", UsageEvent) for r in usage_reader.seen)
            return [e for e in events if e.source_event_id == source]

        await usage_reader.wait_for(lambda r: decode_event(r.value or b"", UsageEvent).source_event_id == job_id)
        await usage_reader.wait_for(lambda r: decode_event(r.value or b"", UsageEvent).source_event_id
                                    == turn.event_id)
        first.stop()

        # A worker with no tables and no committed offsets: it answers the same turn and job again.
        port = str(free_port())
        second = stack.worker(SOMA_WEB_PORT=port, **env)
        for agent in ("conversation", "embeddings", "usage"):
            second.wait_ready(agent, timeout=180)
        await usage_reader.wait_for(lambda r: decode_event(r.value or b"", UsageEvent).source_event_id == job_id,
                                    count=2, timeout=120)
        await usage_reader.wait_for(lambda r: decode_event(r.value or b"", UsageEvent).source_event_id
                                    == turn.event_id, count=2, timeout=120)
        chat, embedding = usage_of(turn.event_id), usage_of(job_id)
        assert len(chat) == 2 and len(embedding) == 2, "each was processed twice"
        assert chat[0].event_id == chat[1].event_id and embedding[0].event_id == embedding[1].event_id

        # The second worker's usage agent read all four usage events (its group starts at the beginning).
        deadline = time.monotonic() + 60
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(http_json, port, f"/usage/{tenant}")
            counts = open_hour_events(body) if status == 200 else {}
            if sum(counts.values()) >= 2:
                await asyncio.sleep(2)  # the repeats, had they counted, would have arrived by now
                status, body = await asyncio.to_thread(http_json, port, f"/usage/{tenant}")
                counts = open_hour_events(body)
                break
            await asyncio.sleep(0.5)
        assert counts == {"chat": 1, "embedding": 1}
    finally:
        if usage_reader is not None:
            await usage_reader.stop()
        if jobs is not None:
            await jobs.stop()
