"""What the engine reports about an agent while it runs: the hooks of :class:`AgentSensor`.

The engine calls a sensor, never a metrics module (the shape of ``faust.sensors``): every hook of the
base does nothing, so a runner built without a sensor (as unit tests build them) reports nowhere, and
the worker's app hands the engine the Prometheus sensor of ``streams/metrics.py``. Metrics import the
engine; the engine does not import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams.catalog import TopicSpec

if TYPE_CHECKING:
    from streams.engine.stream import Batch

__all__ = ["AgentSensor", "SensorFactory"]


class AgentSensor:
    """The sensor of one agent runner: the engine calls these hooks; this base ignores them all."""

    def __init__(self, agent: str, topic: TopicSpec) -> None:
        self.agent = agent
        self.topic = topic

    def batch_started(self, batch: Batch[Any]) -> None:
        """A batch was handed to the agent."""

    def batch_finished(self) -> None:
        """The batch handed out last is durable and its offsets are committed."""

    def dead_lettered(self, error_class: str) -> None:
        """A record was sent to the agent's DLQ (``error_class`` is the DLQ header's)."""

    def restarted(self) -> None:
        """The agent crashed and is restarted."""

    def restoring(self, partitions: int) -> None:
        """This many assigned partitions wait for their tables to be restored (0: none)."""

    def restore_failed(self) -> None:
        """A restore attempt failed or timed out; it is retried."""

    def restore_finished(self, seconds: float, records: int) -> None:
        """The assigned partitions' tables were restored: ``records`` changelog records in ``seconds``."""


#: Builds the sensor of an agent from its name and input topic; :class:`AgentSensor` itself is one.
SensorFactory = Callable[[str, TopicSpec], AgentSensor]
