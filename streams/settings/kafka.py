"""Settings of Kafka: where the cluster is and how the worker's consumers join it."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from streams.settings.base import Section

__all__ = ["KafkaSettings"]


class KafkaSettings(Section):
    section_title: ClassVar[str] = "Kafka: where the cluster is and how the worker's consumers join it"

    kafka_bootstrap_servers: str | None = Field(
        None,
        alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded broker "
        "of the local stack at 127.0.0.1:SOMA_EMBEDDED_BROKER_PORT.",
    )
    embedded_broker_port: int = Field(
        9092, alias="SOMA_EMBEDDED_BROKER_PORT", ge=1, le=65535,
        description="Port of the embedded Tansu broker that `soma dev` starts.",
    )
    partitions: int = Field(
        4, alias="SOMA_PARTITIONS", ge=1, le=1024,
        description="Partitions of each topic this app creates.",
    )
    replication_factor: int = Field(
        1, alias="SOMA_REPLICATION_FACTOR", ge=1, le=16,
        description="Replication factor of topics this app creates.",
    )
    session_timeout_ms: int = Field(
        10_000, alias="SOMA_SESSION_TIMEOUT_MS", ge=1000, le=300_000,
        description="Consumer group session of every agent's consumer (and Faust's own): how long the "
        "broker keeps a silent member (a crashed worker) before its partitions go to the others; heartbeats "
        "go every third of it (at most 1 s). A Kafka cluster refuses less than its "
        "`group.min.session.timeout.ms` (6000 by default). `soma dev` runs its worker on the embedded broker "
        "with 2000, where a join takes half the session.",
    )
    static_membership: bool = Field(
        False, alias="SOMA_STATIC_MEMBERSHIP",
        description="Join the agents' consumer groups as static members (Kafka `group.instance.id`, one per "
        "agent, from `SOMA_WORKER_ID`): a worker restarted within `SOMA_SESSION_TIMEOUT_MS` takes its partitions "
        "back without a rebalance. A static member does not leave its groups when it stops, so its "
        "partitions wait for the session to end unless it comes back. For Kafka clusters; the embedded "
        "broker holds every static join about 6 s.",
    )

    @property
    def bootstrap_servers(self) -> str:
        """Where the Kafka cluster is: the configured one, or the embedded broker's address."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def heartbeat_interval_ms(self) -> int:
        """A third of the session (at most 1 s): two heartbeats may be lost before the member is."""
        return max(100, min(1000, self.session_timeout_ms // 3))
