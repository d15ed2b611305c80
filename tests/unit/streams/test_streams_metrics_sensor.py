"""The Prometheus sensor moves the agent metrics the engine's hooks stand for; the lag gauge follows the
consumers of the running agents."""

from __future__ import annotations

import time
from typing import Any, cast

from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from streams.catalog import EMBEDDING_JOBS
from streams.engine.registry import set_running
from streams.engine.runner import AgentRunner, AgentSpec
from streams.engine.sensor import AgentSensor
from streams.engine.stream import Batch, Record
from streams.metrics import PrometheusAgentSensor, render
from streams.settings import Settings

AGENT = "sensor-test"
TOPIC = EMBEDDING_JOBS.name


async def _noop(stream: Any, context: Any) -> None:
    return None


def _runner(sensor: AgentSensor | None = None) -> AgentRunner:
    spec = AgentSpec(AGENT, EMBEDDING_JOBS, _noop)
    return AgentRunner(spec, Settings.from_env({}), producer=None, sensor=sensor)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_runner_built_without_a_sensor_reports_nowhere() -> None:
    assert type(_runner().sensor) is AgentSensor


def test_batch_hooks_count_records_their_latency_and_the_batch_time() -> None:
    sensor = PrometheusAgentSensor(AGENT, EMBEDDING_JOBS)
    created = int(time.time() * 1000) - 2_000
    records: list[Record[Any]] = [Record(TOPIC, 0, offset, created, None, b"{}", []) for offset in range(3)]
    records.append(Record(TOPIC, 0, 3, 0, None, b"{}", []))  # no CreateTime: no latency
    batch: Batch[Any] = Batch(_runner(sensor), records, created)
    batch.failed = 1
    processed = _value("soma_events_processed_total", agent=AGENT, topic=TOPIC)
    batches = _value("soma_batch_duration_seconds_count", agent=AGENT)
    latencies = _value("soma_event_latency_seconds_count", agent=AGENT, topic=TOPIC)
    fast = _value("soma_event_latency_seconds_bucket", agent=AGENT, topic=TOPIC, le="1.0")
    within = _value("soma_event_latency_seconds_bucket", agent=AGENT, topic=TOPIC, le="5.0")

    sensor.batch_finished()  # before any batch_started: nothing to finish
    sensor.batch_started(batch)
    sensor.batch_finished()
    sensor.batch_finished()  # the batch is finished once

    assert _value("soma_events_processed_total", agent=AGENT, topic=TOPIC) == processed + 3
    assert _value("soma_batch_duration_seconds_count", agent=AGENT) == batches + 1
    assert _value("soma_event_latency_seconds_count", agent=AGENT, topic=TOPIC) == latencies + 3
    assert _value("soma_event_latency_seconds_bucket", agent=AGENT, topic=TOPIC, le="1.0") == fast
    assert _value("soma_event_latency_seconds_bucket", agent=AGENT, topic=TOPIC, le="5.0") == within + 3


def _hook_counts() -> dict[str, float]:
    """The samples the dead-letter, restart and restore hooks move."""
    return {
        "failed": _value("soma_events_failed_total", agent=AGENT, topic=TOPIC),
        "dlq": _value("soma_dlq_messages_total", agent=AGENT, topic=EMBEDDING_JOBS.dlq, error_class="DecodeError"),
        "restarts": _value("soma_agent_restarts_total", agent=AGENT),
        "restore_failures": _value("soma_restore_failures_total", agent=AGENT),
        "restores": _value("soma_restore_duration_seconds_count", agent=AGENT),
        "restore_seconds": _value("soma_restore_duration_seconds_sum", agent=AGENT),
        "restored": _value("soma_restored_records_total", agent=AGENT),
    }


def test_dead_letter_restart_and_restore_hooks() -> None:
    sensor = PrometheusAgentSensor(AGENT, EMBEDDING_JOBS)
    before = _hook_counts()

    sensor.dead_lettered("DecodeError")
    sensor.restarted()
    sensor.restoring(4)
    assert _value("soma_partitions_restoring", agent=AGENT) == 4
    sensor.restore_failed()
    sensor.restore_finished(2.5, 120)
    sensor.restoring(0)

    assert _value("soma_partitions_restoring", agent=AGENT) == 0
    steps = {"failed": 1, "dlq": 1, "restarts": 1, "restore_failures": 1, "restores": 1, "restore_seconds": 2.5,
             "restored": 120}
    assert _hook_counts() == {key: value + steps[key] for key, value in before.items()}


class _Consumer:
    """The parts of an ``AIOKafkaConsumer`` the lag gauge reads."""

    def __init__(self, highwaters: dict[TopicPartition, int | None], positions: dict[TopicPartition, int]) -> None:
        self.highwaters = highwaters
        self.positions = positions

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


async def test_the_lag_gauge_reads_the_consumers_of_the_running_agents() -> None:
    runner = _runner()
    behind, unfetched = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    runner.consumer = cast(Any, _Consumer({behind: 50, unfetched: None}, {behind: 20}))
    await render()
    assert REGISTRY.get_sample_value("soma_consumer_lag", {"agent": AGENT, "topic": TOPIC, "partition": "0"}) is None

    set_running([runner])
    try:
        await render()
    finally:
        set_running([])

    assert _value("soma_consumer_lag", agent=AGENT, topic=TOPIC, partition="0") == 30
    assert REGISTRY.get_sample_value("soma_consumer_lag", {"agent": AGENT, "topic": TOPIC, "partition": "1"}) is None
