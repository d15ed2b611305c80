"""Settings of the batch engine: batches, limits, crash quarantine, dedupe and restores."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from streams.settings.base import Section

__all__ = ["EngineSettings"]


class EngineSettings(Section):
    section_title: ClassVar[str] = "The batch engine: batches, limits, crash quarantine, dedupe and restores"

    batch_max_records: int = Field(
        2000, alias="SOMA_BATCH_MAX_RECORDS", ge=1, le=100_000,
        description="Most records an agent takes from the broker per batch.",
    )
    batch_wait_ms: int = Field(
        100, alias="SOMA_BATCH_WAIT_MS", ge=0, le=10_000,
        description="Longest time the broker holds an agent's fetch open while nothing new arrives. Kafka "
        "answers as soon as data comes, so this only paces idle polling; the embedded Tansu broker answers "
        "a waiting fetch late, adding about a quarter of this to an agent's pickup on average (measured). "
        "Conversation turns use `SOMA_TURN_FETCH_WAIT_MS` instead.",
    )
    max_event_bytes: int = Field(
        1_048_576, alias="SOMA_MAX_EVENT_BYTES", ge=256, le=64 * 1_048_576,
        description="Largest event an agent accepts; a bigger one goes to the DLQ (`EventTooLarge`), "
        "from where it can be re-driven after this limit is raised.",
    )
    quarantine_after_crashes: int = Field(
        3, alias="SOMA_QUARANTINE_AFTER_CRASHES", ge=1, le=100,
        description="Crashes of an agent at one record (alone in its batch) after which that record is "
        "quarantined to the DLQ and the agent moves past it.",
    )
    dedupe_ttl_seconds: int = Field(
        604_800, alias="SOMA_DEDUPE_TTL_SECONDS", ge=60,
        description="How long processed event ids are remembered to drop duplicates.",
    )
    restore_timeout_seconds: float = Field(
        300.0, alias="SOMA_RESTORE_TIMEOUT_SECONDS", gt=0, le=86_400,
        description="Longest one attempt to restore a partition's tables from their changelog may take; a "
        "slower or failing attempt is reported (`/readyz`, `soma_restore_failures_total`, an error log) and "
        "retried with a backoff, resuming where it stopped.",
    )
