"""Prometheus metrics of a worker, served at ``/metrics`` on its web port (``SOMA_WEB_PORT``).

Every metric is defined here, so the names, labels and their bounds are in one place:

======================================  =====================================  ===========================
metric                                  labels                                 what
======================================  =====================================  ===========================
``soma_events_processed_total``         agent, topic                           records an agent handled
``soma_events_failed_total``            agent, topic                           records dead-lettered
``soma_dlq_messages_total``             agent, topic (the DLQ), error_class    messages sent to a DLQ
``soma_event_latency_seconds``          agent, topic                           record CreateTime → committed
``soma_batch_duration_seconds``         agent                                  batch handed out → committed
``soma_consumer_lag``                   agent, topic, partition                high watermark − position
``soma_agent_restarts_total``           agent                                  crashes the agent restarted from
``soma_records_skipped_total``          reader, topic                          undecodable records a view skipped
``soma_partitions_restoring``           agent                                  partitions paused for restore
``soma_restore_failures_total``         agent                                  restore attempts failed/timed out
``soma_restore_duration_seconds``       agent                                  assignment → tables restored
``soma_restored_records_total``         agent                                  changelog records replayed
``soma_usage_tokens_total``             tenant, model, type                    input / output / cached tokens
``soma_usage_cost_usd_total``           tenant, model                          cost in USD
``soma_usage_events_total``             outcome                                accepted / duplicate / late / …
``soma_usage_unpriced_events_total``    model                                  events of models with no price
``soma_usage_windows_closed_total``     size                                   rollup windows closed
``soma_usage_budget_alerts_total``      period, basis, threshold               budget alerts raised
``soma_circuit_breaker_state``          breaker, state                         1 for the current state
``soma_circuit_breaker_transitions_…``  breaker, state                         transitions into a state
======================================  =====================================  ===========================

Label cardinality is bounded: agents, topics, partitions, error classes, window sizes, periods and
breaker names are finite by construction. Tenants and models come from outside, so
:class:`LabelBudget` admits at most ``SOMA_METRICS_MAX_TENANTS`` tenant values and
``SOMA_METRICS_MAX_MODELS`` model values per worker (the first ones seen since the worker started) and
folds every later value into ``"other"``; the usage series are then at most
``(tenants + 1) × (models + 1) × 4``. The exact per-tenant figures are in the rollups, not in Prometheus.

The engine calls the hooks of each agent's :class:`~streams.engine.sensor.AgentSensor`; the worker's
app hands it :class:`PrometheusAgentSensor`, whose hooks do O(1) work per batch plus one cheap loop
over the batch's records for the latency histogram (a bulk histogram, not one ``observe`` per event).
The consumer lag is read at scrape time from the consumers of the engine's running agents.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from streams.catalog import TopicSpec
from streams.engine.registry import running_agents
from streams.engine.sensor import AgentSensor
from streams.settings import WorkerSettings
from streams.web import page

if TYPE_CHECKING:
    from connectors.circuit import CircuitBreaker, CircuitState
    from streams.engine.stream import Batch

__all__ = [
    "RECORDS_SKIPPED",
    "LabelBudget",
    "PrometheusAgentSensor",
    "model_label",
    "render",
    "track_breaker",
    "usage_labels",
]

logger = logging.getLogger(__name__)

OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

EVENTS_PROCESSED = Counter("soma_events_processed_total", "Records an agent handled (decoded and not dead-lettered).",
                           ["agent", "topic"])
EVENTS_FAILED = Counter("soma_events_failed_total", "Records an agent dead-lettered (undecodable, invalid or failed).",
                        ["agent", "topic"])
DLQ_MESSAGES = Counter("soma_dlq_messages_total", "Messages sent to a dead-letter topic, by error class.",
                       ["agent", "topic", "error_class"])
BATCH_SECONDS = Histogram("soma_batch_duration_seconds",
                          "Time from a batch handed to the agent until its effects are durable and committed.",
                          ["agent"], buckets=LATENCY_BUCKETS)
CONSUMER_LAG = Gauge("soma_consumer_lag", "Records behind the partition's high watermark (at scrape time).",
                     ["agent", "topic", "partition"])
AGENT_RESTARTS = Counter("soma_agent_restarts_total", "Times an agent crashed and was restarted.", ["agent"])
RECORDS_SKIPPED = Counter("soma_records_skipped_total",
                          "Records a reader of another agent's output (a topic view) stepped over because they "
                          "did not decode or validate.", ["reader", "topic"])
PARTITIONS_RESTORING = Gauge("soma_partitions_restoring",
                             "Assigned partitions not processed yet: their tables are being restored from the "
                             "changelog, or a failed restore waits to be retried.", ["agent"])
RESTORE_FAILURES = Counter("soma_restore_failures_total",
                           "Changelog restore attempts that failed or did not finish within "
                           "SOMA_RESTORE_TIMEOUT_SECONDS (each is retried).", ["agent"])
RESTORE_SECONDS = Histogram("soma_restore_duration_seconds",
                            "Time from a partition assignment until its tables were restored (retries included).",
                            ["agent"], buckets=LATENCY_BUCKETS)
RESTORED_RECORDS = Counter("soma_restored_records_total", "Changelog records replayed into tables by restores.",
                           ["agent"])

USAGE_TOKENS = Counter("soma_usage_tokens_total", "Tokens accounted by the usage agent (bounded tenant/model labels).",
                       ["tenant", "model", "type"])
USAGE_COST = Counter("soma_usage_cost_usd_total", "USD accounted by the usage agent (bounded tenant/model labels).",
                     ["tenant", "model"])
USAGE_EVENTS = Counter("soma_usage_events_total",
                       "Usage events by outcome: accepted, duplicate, late (to the DLQ), rejected (to the DLQ: "
                       "breaks an accounting rule).",
                       ["outcome"])
USAGE_UNPRICED = Counter("soma_usage_unpriced_events_total",
                         "Usage events without cost_usd whose model has no price (tokens counted, cost 0).", ["model"])
USAGE_WINDOWS_CLOSED = Counter("soma_usage_windows_closed_total", "Rollup windows closed and reported.", ["size"])
USAGE_BUDGET_ALERTS = Counter("soma_usage_budget_alerts_total", "Budget alerts raised.",
                              ["period", "basis", "threshold"])

CIRCUIT_STATE = Gauge("soma_circuit_breaker_state", "1 for the breaker's current state, 0 for the others.",
                      ["breaker", "state"])
CIRCUIT_TRANSITIONS = Counter("soma_circuit_breaker_transitions_total", "Transitions of a breaker into a state.",
                              ["breaker", "state"])


# -- bounded labels ------------------------------------------------------------------------------------


class LabelBudget:
    """Admits at most ``limit`` distinct label values (first come); later ones read ``"other"``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._admitted:
            return value
        if len(self._admitted) < self.limit and value != OTHER:
            self._admitted.add(value)
            return value
        return OTHER

    def __len__(self) -> int:
        return len(self._admitted)


_tenants = LabelBudget(WorkerSettings.model_fields["metrics_max_tenants"].default)
_models = LabelBudget(WorkerSettings.model_fields["metrics_max_models"].default)


def configure(settings: WorkerSettings) -> None:
    """Apply ``SOMA_METRICS_MAX_TENANTS`` and ``SOMA_METRICS_MAX_MODELS`` (``create_app`` calls it)."""
    _tenants.limit = settings.metrics_max_tenants
    _models.limit = settings.metrics_max_models


def usage_labels(tenant: str, model: str) -> tuple[str, str]:
    """The (tenant, model) label values to use: the real ones within the budget, else ``"other"``."""
    return _tenants(tenant), _models(model)


def model_label(model: str) -> str:
    return _models(model)


# -- the latency histogram: bulk observations ------------------------------------------------------------


class BulkHistogram(Collector):
    """A labelled histogram fed a batch of values at once (one ``observe`` per event costs too much)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = list(buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.bounds) + 2)
        bounds, total = self.bounds, 0.0
        for value in values:
            series[bisect.bisect_left(bounds, value)] += 1
            total += value
        series[-1] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for labels, series in self._series.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], series[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(labels), buckets, series[-1])
        yield family


EVENT_LATENCY = BulkHistogram("soma_event_latency_seconds",
                              "Time from a record's CreateTime until the agent committed it.", ("agent", "topic"))
REGISTRY.register(EVENT_LATENCY)


# -- engine hooks --------------------------------------------------------------------------------------


class PrometheusAgentSensor(AgentSensor):
    """The engine's hooks of one agent, counted into the metrics above."""

    def __init__(self, agent: str, topic: TopicSpec) -> None:
        super().__init__(agent, topic)
        self._labels = (agent, topic.name)
        self._processed = EVENTS_PROCESSED.labels(agent, topic.name)
        self._failed = EVENTS_FAILED.labels(agent, topic.name)
        self._batch_seconds = BATCH_SECONDS.labels(agent)
        self._restarts = AGENT_RESTARTS.labels(agent)
        self._batch: Batch[Any] | None = None
        self._started = 0.0

    def batch_started(self, batch: Batch[Any]) -> None:
        self._batch = batch
        self._started = time.monotonic()

    def batch_finished(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self._batch_seconds.observe(time.monotonic() - self._started)
        if batch.records:
            self._processed.inc(max(0, len(batch.records) - batch.failed))
            now = time.time()
            EVENT_LATENCY.observe_many(
                self._labels, (max(0.0, now - record.timestamp / 1000) for record in batch.records
                               if record.timestamp > 0),
            )

    def dead_lettered(self, error_class: str) -> None:
        self._failed.inc()
        DLQ_MESSAGES.labels(self.agent, self.topic.dlq, error_class).inc()

    def restarted(self) -> None:
        self._restarts.inc()

    def restoring(self, partitions: int) -> None:
        PARTITIONS_RESTORING.labels(self.agent).set(partitions)

    def restore_failed(self) -> None:
        RESTORE_FAILURES.labels(self.agent).inc()

    def restore_finished(self, seconds: float, records: int) -> None:
        RESTORE_SECONDS.labels(self.agent).observe(seconds)
        RESTORED_RECORDS.labels(self.agent).inc(records)


async def _update_lag() -> None:
    """Set the lag gauges from each running agent's consumer: its high watermarks and positions."""
    for runner in running_agents():
        consumer = runner.consumer
        if consumer is None:
            continue
        for tp in list(consumer.assignment()):
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await consumer.position(tp)
            except Exception:  # revoked or not yet fetched: nothing to say about it now
                continue
            CONSUMER_LAG.labels(runner.name, tp.topic, str(tp.partition)).set(max(0, highwater - position))


# -- circuit breakers ----------------------------------------------------------------------------------


def track_breaker(breaker: CircuitBreaker) -> CircuitBreaker:
    """Export a breaker's state (call once per breaker, where it is created)."""
    from connectors.circuit import CircuitState

    def on_change(name: str, old: CircuitState, new: CircuitState) -> None:
        _set_state(name, new)
        CIRCUIT_TRANSITIONS.labels(name, new.value).inc()

    def _set_state(name: str, current: CircuitState) -> None:
        for state in CircuitState:
            CIRCUIT_STATE.labels(name, state.value).set(1 if state is current else 0)

    _set_state(breaker.name, breaker.state)
    breaker.on_state_change(on_change)
    return breaker


# -- the endpoint --------------------------------------------------------------------------------------


async def render() -> bytes:
    """The exposition text of every metric of this process (default registry: process and GC too)."""
    await _update_lag()
    return bytes(generate_latest(REGISTRY))


@page("/metrics")
async def metrics_page(self: Any, request: Any) -> Any:
    """Prometheus scrape endpoint."""
    return self.bytes(await render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
