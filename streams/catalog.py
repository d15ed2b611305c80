"""Every topic of the system, declared once: name, key, value contract, compaction and retention.

Topics are created when a worker starts (existing ones are left as they are). Each input topic has a
``<topic>.dlq`` sibling that receives the original bytes of events that could not be processed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    LockCommand,
    LockState,
    TurnEvent,
    UsageEvent,
    UsageReport,
)
from streams.exceptions import UnknownTopicError

__all__ = [
    "CATALOG",
    "CONVERSATION_EVENTS",
    "CONVERSATION_TURNS",
    "DLQ_SUFFIX",
    "EMBEDDING_JOBS",
    "EMBEDDING_RESULTS",
    "LOCK_COMMANDS",
    "LOCK_STATE",
    "USAGE_EVENTS",
    "USAGE_REPORTS",
    "TopicSpec",
    "dlq_topic",
    "ensure_topics",
    "topic_spec",
]

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalog."""

    name: str
    model: type[Envelope]
    key: str
    description: str
    compacted: bool = False
    retention_ms: int = 7 * _DAY_MS
    #: Inputs accept JSON objects besides Avro and have a dead-letter topic.
    is_input: bool = False

    @property
    def dlq(self) -> str:
        return dlq_topic(self.name)

    def configs(self) -> dict[str, str]:
        policy = "compact" if self.compacted else "delete"
        return {"cleanup.policy": policy, "retention.ms": str(self.retention_ms)}


def dlq_topic(name: str) -> str:
    return name + DLQ_SUFFIX


CONVERSATION_TURNS = TopicSpec(
    "soma.conversation.turns", ConversationTurn, "session_id", "conversation turns to answer", is_input=True
)
CONVERSATION_EVENTS = TopicSpec(
    "soma.conversation.events", TurnEvent, "session_id", "started / chunk / completed / failed events"
)
EMBEDDING_JOBS = TopicSpec(
    "soma.embedding.jobs", EmbeddingJob, "tenant", "upsert / delete / search jobs", is_input=True
)
EMBEDDING_RESULTS = TopicSpec("soma.embedding.results", EmbeddingResult, "tenant", "results of embedding jobs")
LOCK_COMMANDS = TopicSpec(
    "soma.training.lock.commands", LockCommand, "tenant", "enable / disable / extend / status", is_input=True
)
LOCK_STATE = TopicSpec(
    "soma.training.lock.state",
    LockState,
    "tenant",
    "lock state per tenant (compacted); refusals are keyed '<tenant>#rejected'",
    compacted=True,
)
USAGE_EVENTS = TopicSpec("soma.usage.events", UsageEvent, "tenant", "token usage per call", is_input=True)
USAGE_REPORTS = TopicSpec(
    "soma.usage.reports", UsageReport, "tenant", "rollups, forecasts and budget alerts"
)

CATALOG: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        CONVERSATION_TURNS,
        CONVERSATION_EVENTS,
        EMBEDDING_JOBS,
        EMBEDDING_RESULTS,
        LOCK_COMMANDS,
        LOCK_STATE,
        USAGE_EVENTS,
        USAGE_REPORTS,
    )
}


def topic_spec(name: str) -> TopicSpec:
    """The catalog entry of a topic (or of the topic whose DLQ this is)."""
    spec = CATALOG.get(name.removesuffix(DLQ_SUFFIX))
    if spec is None:
        known = ", ".join(sorted(CATALOG))
        raise UnknownTopicError(f"unknown topic {name!r}; known topics: {known}")
    return spec


def all_topics(partitions: int, replication: int) -> list[NewTopic]:
    """NewTopic requests for the catalog and every input's dead-letter topic."""
    topics = []
    for spec in CATALOG.values():
        topics.append(NewTopic(spec.name, partitions, replication, topic_configs=spec.configs()))
        if spec.is_input:
            configs = {"cleanup.policy": "delete", "retention.ms": str(30 * _DAY_MS)}
            topics.append(NewTopic(spec.dlq, partitions, replication, topic_configs=configs))
    return topics


async def ensure_topics(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> list[str]:
    """Create the topics that don't exist yet; return the names created."""
    existing = set(await admin.list_topics())
    missing = [topic for topic in topics if topic.name not in existing]
    if not missing:
        return []
    response = await admin.create_topics(missing)
    created = []
    for name, code, message in _topic_errors(response):
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            raise RuntimeError(f"could not create topic {name}: error {code} {message}")
    if created:
        logger.info("created topics: %s", ", ".join(created))
    return created


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    errors = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((name, code, message))
    return errors
