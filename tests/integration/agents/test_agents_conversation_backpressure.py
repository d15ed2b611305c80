"""The conversation agent under load and at start: fair model slots, a bounded number of turns in flight,
a timeout over the whole turn, and the training-mode policy from the first turn after a restart.

Real broker, worker and llama.cpp model server. Nothing is measured for speed: the order of answers,
the overlap of turns (from the timestamps the worker put on their events) and the reasons are checked.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from connectors.model_server import EmbeddedModelServer
from schemas import LockState, TurnEvent, decode_event, encode_event
from streams.catalog import LOCK_STATE
from tests.integration.conftest import ADMIN, LockClient, Stack, TurnClient
from tests.support.faulty_http import FaultyServer, hang
from tests.support.stack import produce_raw

pytestmark = pytest.mark.integration


def _turn(tenant: str, prompt: str = "Say hi.", session: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"tenant": tenant, "session_id": session or f"s-{uuid.uuid4().hex[:10]}", "user": "ann",
            "prompt": prompt, "max_tokens": 8, "temperature": 0, **extra}


def _timeline(turns: TurnClient, turn_ids: set[str]) -> list[tuple[int, int, str, str]]:
    """(worker timestamp ms, 0 = finished / 1 = started, type, turn id) of these turns' events, in time order.

    At equal timestamps a turn's end sorts before another's start: the worker takes a new turn only
    after a finished one released its place, so equal milliseconds mean end first.
    """
    rows = []
    for record in turns.events.seen:
        event = decode_event(record.value or b"", TurnEvent)
        if event.turn_id in turn_ids and event.type in ("started", "completed", "failed"):
            rows.append((record.timestamp, 1 if event.type == "started" else 0, event.type, event.turn_id))
    return sorted(rows)


async def _all_finished(turns: TurnClient, ids: list[str], timeout: float = 180.0) -> dict[str, TurnEvent]:
    return {turn_id: await turns.finished(turn_id, timeout=timeout) for turn_id in ids}


async def test_a_flood_of_one_tenant_does_not_keep_another_tenants_turn_behind_it(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any, tenant: str,
) -> None:
    stack = stack_factory()
    stack.worker(OPENAI_BASE_URL=model_server.base_url, SOMA_MAX_CONCURRENT_TURNS="1").wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)
    flood = [await turns.send(_turn(f"{tenant}-a", f"Count to {i}.")) for i in range(8)]
    flood_ids = {turn.event_id for turn in flood}
    # Every turn of the flood is held by the worker (queued for the one model slot) before B asks.
    await turns.events.wait_for(lambda r: decode_event(r.value or b"", TurnEvent).turn_id in flood_ids
                                and decode_event(r.value or b"", TurnEvent).type == "started", count=8, timeout=60)

    other = await turns.send(_turn(f"{tenant}-b"))
    finals = await _all_finished(turns, [other.event_id, *flood_ids])

    assert all(final.type == "completed" for final in finals.values()), finals
    order = [turn_id for _, _, kind, turn_id in _timeline(turns, {other.event_id, *flood_ids}) if kind == "completed"]
    flood_done_before_b = order.index(other.event_id)
    assert flood_done_before_b <= 4, f"B waited for {flood_done_before_b} of A's 8 turns (a FIFO would be 8)"


async def test_the_turns_a_worker_holds_stay_within_the_bound(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any, tenant: str,
) -> None:
    stack = stack_factory()
    worker = stack.worker(OPENAI_BASE_URL=model_server.base_url, SOMA_MAX_CONCURRENT_TURNS="1",
                          SOMA_MAX_TURNS_IN_FLIGHT="3")
    worker.wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)
    flood = [await turns.send(_turn(tenant, f"Count to {i}.")) for i in range(9)]
    ids = {turn.event_id for turn in flood}

    finals = await _all_finished(turns, list(ids))

    assert all(final.type == "completed" for final in finals.values()), finals
    held, most = set(), 0
    for _, _, kind, turn_id in _timeline(turns, ids):
        if kind == "started":
            held.add(turn_id)
        else:
            held.discard(turn_id)
        most = max(most, len(held))
    assert most == 3, f"at most {most} turns were held at once; the bound is 3"
    assert "agent conversation: 3 records in flight (the bound); fetching paused" in worker.tail_log(2000)


@pytest.fixture
async def hanging_embeddings() -> AsyncIterator[FaultyServer]:
    server = await FaultyServer().start()
    server.reply = hang()
    yield server
    await server.stop()


async def test_a_turn_behind_a_hanging_predecessor_times_out_within_the_turn_timeout(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any,
    hanging_embeddings: FaultyServer, tenant: str,
) -> None:
    """The first turn's memory retrieval never returns; the second turn of the session waits for it.

    Without a timeout over the whole turn the second waits as long as the first hangs (here up to the
    endpoint's 120 s) before its own time even starts.
    """
    stack = stack_factory()
    stack.worker(OPENAI_BASE_URL=model_server.base_url, SOMA_TURN_TIMEOUT_SECONDS="3",
                 SOMA_EMBEDDINGS_BACKEND="openai", SOMA_EMBEDDINGS_BASE_URL=f"{hanging_embeddings.url}/v1",
                 SOMA_EMBEDDINGS_MODEL="e", SOMA_EMBEDDINGS_TIMEOUT_SECONDS="120").wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)
    session = f"s-{uuid.uuid4().hex[:10]}"
    first = await turns.send(_turn(tenant, "What does the handbook say?", session, memory={"collection": "c"}))
    second = await turns.send(_turn(tenant, "And then?", session, memory={"collection": "c"}))

    # Well within the 120 s the hanging endpoint would hold a retrieval without the turn's own timeout.
    finals = await _all_finished(turns, [first.event_id, second.event_id], timeout=30)

    assert finals[first.event_id].type == "failed"
    assert "TurnTimedOut" in (finals[first.event_id].error or "")
    assert "retrieving memory" in (finals[first.event_id].error or ""), finals[first.event_id].error
    assert finals[second.event_id].type == "failed"
    assert "TurnTimedOut" in (finals[second.event_id].error or ""), finals[second.event_id].error
    timeline = {(kind, turn_id): ts for ts, _, kind, turn_id in _timeline(turns, {second.event_id})}
    waited = (timeline[("failed", second.event_id)] - timeline[("started", second.event_id)]) / 1000
    assert waited < 3 + 2, f"the second turn failed {waited:.1f} s after it started; the turn timeout is 3 s"
    letters = await turns.dlq.wait_for(lambda r: True, count=2)
    assert len(letters) == 2
    assert hanging_embeddings.requests, "the retrieval did reach the (hanging) embeddings endpoint"


async def test_reject_applies_to_the_first_turn_after_a_restart(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any,
    lock_client_factory: Any, tenant: str,
) -> None:
    """The agent reads the lock state topic to its end before its first turn (the log says so).

    Without that wait the first turn is checked against whatever the view has read by then. On the
    embedded broker the group join (about 5 s) usually outlasts reading this topic, so a worker that
    does not wait is refused here by luck; on a cluster that joins at once (static membership) it is not.
    """
    stack = stack_factory()
    first = stack.worker(OPENAI_BASE_URL=model_server.base_url)
    first.wait_ready("conversation")
    # A lock state topic with a history, as in production: released locks of many other tenants come
    # before this tenant's lock, so reading the topic takes the new worker a moment.
    history = [LockState(tenant=f"{tenant}-{i}", status="released", action="disable") for i in range(20_000)]
    await produce_raw(stack.bootstrap, LOCK_STATE.name, [(e.tenant.encode(), encode_event(e)) for e in history])
    locks: LockClient = await lock_client_factory(stack.bootstrap)
    assert (await locks.ask({"tenant": tenant, "action": "enable", **ADMIN}, timeout=120)).status == "active"
    first.stop()

    turns: TurnClient = await turn_client_factory(stack.bootstrap)
    turn = await turns.send(_turn(tenant))  # waiting in the topic: the new worker's very first turn
    second = stack.worker(app_id=first.app_id, OPENAI_BASE_URL=model_server.base_url)
    second.wait_ready("conversation")
    final = await turns.finished(turn.event_id, timeout=90)

    assert final.type == "failed" and "training mode" in (final.error or ""), final
    assert "training lock state read (20001 tenants)" in second.tail_log(2000)
