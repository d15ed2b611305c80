"""The embedded Tansu broker for real: start it, produce and consume a message, stop it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.broker import EmbeddedBroker, port_answers

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[[], EmbeddedBroker]]:
    """Start brokers with ``broker_factory()``; any still running are stopped after the test."""
    started: list[EmbeddedBroker] = []

    def make() -> EmbeddedBroker:
        broker = EmbeddedBroker(log_path=tmp_path / f"broker-{len(started)}.log")
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


async def test_embedded_broker_produces_consumes_and_stops(broker_factory: Callable[[], EmbeddedBroker]) -> None:
    broker = broker_factory()
    assert broker.running
    assert port_answers(broker.host, broker.port)
    topic = f"it-broker-{uuid.uuid4().hex[:8]}"
    headers = [("dlq.attempts", b"1"), ("x-trace", b"abc")]

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, b"hello", key=b"tenant-a", headers=headers)
    finally:
        await producer.stop()
    assert metadata.topic == topic
    assert metadata.offset >= 0

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, metadata.partition)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert message.key == b"tenant-a"
    assert message.value == b"hello"
    assert message.offset == metadata.offset
    assert list(message.headers) == headers

    broker.stop()

    assert not broker.running
    assert not port_answers(broker.host, broker.port, timeout=0.5)
