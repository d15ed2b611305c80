"""The parts of the outbox that need no broker: collecting, counting, discarding, an empty flush."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer

from connectors.broker import free_port
from streams.engine.outbox import Outbox, Outgoing
from streams.exceptions import OutputTooLarge


@pytest.fixture
async def outbox_factory() -> AsyncIterator[Callable[[], Outbox]]:
    """Outboxes over a producer that is never started: nothing here may touch the network."""
    producers: list[AIOKafkaProducer] = []

    def make() -> Outbox:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{free_port()}")
        producers.append(producer)
        return Outbox(producer)

    yield make
    for producer in producers:
        await producer.stop()


async def test_send_collects_messages(outbox_factory: Callable[[], Outbox]) -> None:
    outbox = outbox_factory()

    assert len(outbox) == 0
    outbox.send("t", b"k", b"v")
    outbox.send("t", None, None, partition=2, headers=[("h", b"1")], timestamp_ms=123)

    assert len(outbox) == 2


async def test_outgoing_defaults() -> None:
    first = Outgoing("t", b"k", b"v")
    second = Outgoing("t", b"k", b"v")

    assert first.partition is None
    assert first.timestamp_ms is None
    assert first.headers == []
    first.headers.append(("h", b"1"))
    assert second.headers == []  # no shared default list


async def test_discard_drops_everything(outbox_factory: Callable[[], Outbox]) -> None:
    outbox = outbox_factory()
    outbox.send("t", b"k", b"v")
    outbox.send("u", b"k", b"v")

    outbox.discard()

    assert len(outbox) == 0
    assert await outbox.flush() == {}


async def test_flush_of_empty_outbox_sends_nothing(outbox_factory: Callable[[], Outbox]) -> None:
    outbox = outbox_factory()

    assert await outbox.flush() == {}
    assert len(outbox) == 0


async def test_rollback_forgets_only_what_came_after_the_mark(outbox_factory: Callable[[], Outbox]) -> None:
    outbox = outbox_factory()
    outbox.send("t", b"kept", b"v")
    mark = outbox.mark()
    outbox.send("t", b"undone", b"v")
    outbox.send("u", b"undone", b"v")

    outbox.rollback(mark)

    assert len(outbox) == 1


async def test_a_message_over_the_producers_request_limit_is_refused_on_send(
    outbox_factory: Callable[[], Outbox],
) -> None:
    outbox = outbox_factory()
    limit = 1_048_576  # aiokafka's default max_request_size, which the factory's producer keeps

    outbox.send("t", b"k", b"x" * (limit - 1))
    with pytest.raises(OutputTooLarge, match="larger than the producer's max_request_size"):
        outbox.send("t", b"k", b"x" * limit)
    assert len(outbox) == 1
