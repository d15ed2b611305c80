"""Fan-out bookkeeping without a broker: cursors, the index, backlog planning, the handover rule, cut-offs.

The reader's Kafka side is covered by the integration tests; here records are aiokafka's own
ConsumerRecord objects handed to the dispatcher directly.
"""

from __future__ import annotations

from collections import deque

import pytest
from aiokafka.structs import ConsumerRecord

import streams.bridge.fanout as fanout_module
from schemas import to_json_dict
from streams.bridge.exceptions import BadCursor
from streams.bridge.fanout import CUT, Cursor, Delivery, FanOut, Subscriber
from streams.bridge.metrics import BridgeMetrics
from streams.catalog import CONVERSATION_EVENTS
from streams.settings import Settings
from tests.support.bridge import turn_event
from tests.support.poison import poison_values

TOPIC = CONVERSATION_EVENTS.name


def test_cursor_round_trip_and_refusals() -> None:
    cursor = Cursor(TOPIC, {0: 17, 1: 0, 3: 9})
    assert cursor.encode() == f"{TOPIC}@0:17,1:0,3:9"
    assert Cursor.decode(cursor.encode(), TOPIC) == cursor
    for bad in ("nope", f"{TOPIC}@x:1", f"{TOPIC}@0:-1", "soma.usage.reports@0:1", f"{TOPIC}@0"):
        with pytest.raises(BadCursor):
            Cursor.decode(bad, TOPIC)


def _fanout(buffer: int = 8, replay: int = 100) -> FanOut:
    settings = Settings.from_env({"SOMA_BRIDGE_CLIENT_BUFFER": str(buffer), "SOMA_BRIDGE_REPLAY_RECORDS": str(replay)})
    fanout = FanOut(settings, [CONVERSATION_EVENTS])
    fanout.live[TOPIC] = {0: 0, 1: 0}
    for p in (0, 1):
        fanout.ring[(TOPIC, p)] = deque(maxlen=max(1, replay))
        fanout.ring_from[(TOPIC, p)] = 0
    return fanout


def _records(partition: int, start: int, events: list[tuple[str, str]]) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for i, (tenant, session) in enumerate(events):
        key, value, _ = turn_event(tenant, session, start + i)
        out.append(ConsumerRecord(TOPIC, partition, start + i, 0, 0, key, value, None, len(key), len(value), []))
    return out


def _drain(subscriber: Subscriber) -> list[Delivery]:
    items = []
    while not subscriber.queue.empty():
        item = subscriber.queue.get_nowait()
        assert isinstance(item, Delivery)
        items.append(item)
    return items


async def test_dispatch_matches_by_tenant_and_key_only() -> None:
    fanout = _fanout()
    mine = Subscriber(TOPIC, "acme", "s1", 8)
    all_mine = Subscriber(TOPIC, "acme", None, 8)
    theirs = Subscriber(TOPIC, "globex", "s1", 8)
    for s in (mine, all_mine, theirs):
        fanout.subscribe(s, None)
    fanout._dispatch(CONVERSATION_EVENTS, 0, _records(0, 0, [("acme", "s1"), ("globex", "s1"), ("acme", "s2")]))
    assert [d.offset for d in _drain(mine)] == [0]
    assert [d.offset for d in _drain(all_mine)] == [0, 2]
    assert [d.offset for d in _drain(theirs)] == [1]
    for s in (mine, all_mine, theirs):
        fanout.unsubscribe(s)
    assert fanout.index == {} and fanout.subscribers == 0


async def test_backlog_comes_from_the_ring_or_kafka_and_ends_where_live_begins() -> None:
    fanout = _fanout(replay=3)
    fanout._dispatch(CONVERSATION_EVENTS, 0, _records(0, 0, [("acme", "s1")] * 5))  # ring keeps offsets 2..4
    assert fanout.live[TOPIC][0] == 5 and fanout.ring_from[(TOPIC, 0)] == 2
    recent = Subscriber(TOPIC, "acme", "s1", 8)
    backlog = fanout.subscribe(recent, Cursor(TOPIC, {0: 3, 1: 0}))
    assert [d.offset for d in backlog.from_memory] == [3, 4] and backlog.from_kafka == {}
    old = Subscriber(TOPIC, "acme", "s1", 8)
    backlog = fanout.subscribe(old, Cursor(TOPIC, {0: 1, 1: 0}))
    assert backlog.from_memory == [] and backlog.from_kafka == {0: (1, 5)}
    # Live records from the handover on go to the queue; the cursor drops anything already sent.
    fanout._dispatch(CONVERSATION_EVENTS, 0, _records(0, 5, [("acme", "s1")]))
    for d in backlog.from_memory:
        assert recent.accepts(d)
    live = _drain(recent)
    assert [d.offset for d in live] == [5] and recent.accepts(live[0]) and not recent.accepts(live[0])


async def test_a_cursor_ahead_of_the_reader_drops_what_it_already_has() -> None:
    fanout = _fanout()
    subscriber = Subscriber(TOPIC, "acme", "s1", 8)
    backlog = fanout.subscribe(subscriber, Cursor(TOPIC, {0: 2, 1: 0}))  # e.g. from a bridge further ahead
    assert backlog.from_memory == [] and backlog.from_kafka == {}
    fanout._dispatch(CONVERSATION_EVENTS, 0, _records(0, 0, [("acme", "s1")] * 3))
    assert [d.offset for d in _drain(subscriber) if subscriber.accepts(d)] == [2]


async def test_a_full_queue_cuts_the_client_and_frees_its_buffer() -> None:
    fanout = _fanout(buffer=4)
    subscriber = Subscriber(TOPIC, "acme", "s1", 4)
    fanout.subscribe(subscriber, None)
    fanout._dispatch(CONVERSATION_EVENTS, 0, _records(0, 0, [("acme", "s1")] * 6))
    assert subscriber.cut_reason and "fell behind" in subscriber.cut_reason
    assert subscriber.queue.qsize() == 1 and subscriber.queue.get_nowait() is CUT
    assert fanout.index == {} and fanout.subscribers == 0


def test_undecodable_records_are_skipped_not_fatal() -> None:
    fanout = _fanout()
    subscriber = Subscriber(TOPIC, "acme", "s1", 8)
    fanout.subscribe(subscriber, None)
    good = _records(0, 1, [("acme", "s1")])
    bad = ConsumerRecord(TOPIC, 0, 0, 0, 0, b"s1", b"\x00\x00\x00\x00\x01garbage", None, 2, 12, [])
    fanout._dispatch(CONVERSATION_EVENTS, 0, [bad, *good])
    assert [d.offset for d in _drain(subscriber)] == [1]
    assert fanout.live[TOPIC][0] == 2


@pytest.mark.parametrize("kind,value", poison_values(to_json_dict(turn_event("acme", "s1", 0)[2])),
                         ids=[kind for kind, _ in poison_values(to_json_dict(turn_event("acme", "s1", 0)[2]))])
def test_no_poison_record_stops_the_reader(kind: str, value: bytes) -> None:
    fanout = _fanout()
    subscriber = Subscriber(TOPIC, "acme", "s1", 8)
    fanout.subscribe(subscriber, None)
    bad = ConsumerRecord(TOPIC, 0, 0, 0, 0, b"s1", value, None, 2, len(value), [])
    fanout._dispatch(CONVERSATION_EVENTS, 0, [bad, *_records(0, 1, [("acme", "s1")])])
    delivered = [d.offset for d in _drain(subscriber)]
    assert delivered[-1] == 1, f"{kind}: the valid record after it was not delivered"
    assert fanout.live[TOPIC][0] == 2


@pytest.mark.parametrize("error", [OverflowError("date value out of range"), RecursionError("deep"),
                                   MemoryError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                                   KeyError("x"), RuntimeError("a decoder bug")])
def test_any_exception_of_the_decoder_is_a_counted_skip(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    metrics = BridgeMetrics()
    fanout = FanOut(Settings.from_env({}), [CONVERSATION_EVENTS], metrics)
    fanout.live[TOPIC] = {0: 0}
    fanout.ring[(TOPIC, 0)] = deque(maxlen=10)
    fanout.ring_from[(TOPIC, 0)] = 0
    subscriber = Subscriber(TOPIC, "acme", "s1", 8)
    fanout.subscribe(subscriber, None)
    real = fanout_module.decode_event
    records = _records(0, 0, [("acme", "s1"), ("acme", "s2"), ("acme", "s1")])
    poisoned = records[0].value

    def decode(value: bytes, model: type) -> object:
        if value == poisoned:
            raise error
        return real(value, model)

    monkeypatch.setattr(fanout_module, "decode_event", decode)
    fanout._dispatch(CONVERSATION_EVENTS, 0, records)
    assert [d.offset for d in _drain(subscriber)] == [2]
    assert metrics.records_skipped.labels(TOPIC)._value.get() == 1
