"""Dead-letter plumbing: what an event that could not be processed carries to ``<topic>.dlq``.

The original key and bytes go unchanged, so a fixed event can be re-driven as it was; the headers say
where it came from and why it failed. Header names are a public contract (ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeadLetter", "dlq_headers", "parse_dlq_headers"]

ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
ERROR_CLASS = "dlq.error.class"
ERROR_MESSAGE = "dlq.error.message"
ATTEMPTS = "dlq.attempts"
AGENT = "dlq.agent"

_MAX_MESSAGE = 4000


@dataclass(frozen=True)
class DeadLetter:
    """Why and where an event failed."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    error_class: str
    error_message: str
    attempts: int = 1
    agent: str = ""


def dlq_headers(letter: DeadLetter, original: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """The original headers (minus stale dlq.* ones) followed by the dead-letter headers."""
    kept = [(name, value) for name, value in (original or []) if not name.startswith("dlq.")]
    return [
        *kept,
        (ORIGINAL_TOPIC, letter.topic.encode()),
        (ORIGINAL_PARTITION, str(letter.partition).encode()),
        (ORIGINAL_OFFSET, str(letter.offset).encode()),
        (ORIGINAL_TIMESTAMP, str(letter.timestamp).encode()),
        (ERROR_CLASS, letter.error_class.encode()),
        (ERROR_MESSAGE, letter.error_message[:_MAX_MESSAGE].encode("utf-8", "replace")),
        (ATTEMPTS, str(letter.attempts).encode()),
        (AGENT, letter.agent.encode()),
    ]


def parse_dlq_headers(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> DeadLetter:
    """Read the dead-letter headers back (operator tooling, tests); a malformed number reads as its default.

    Anyone can write to a DLQ topic, so the headers are not trusted: a listing must not stop on one
    entry whose ``dlq.original.offset`` is not a number.
    """
    values = {name: value.decode("utf-8", "replace") for name, value in headers if name.startswith("dlq.")}
    return DeadLetter(
        topic=values.get(ORIGINAL_TOPIC, ""),
        partition=_int(values.get(ORIGINAL_PARTITION), -1),
        offset=_int(values.get(ORIGINAL_OFFSET), -1),
        timestamp=_int(values.get(ORIGINAL_TIMESTAMP), 0),
        error_class=values.get(ERROR_CLASS, ""),
        error_message=values.get(ERROR_MESSAGE, ""),
        attempts=_int(values.get(ATTEMPTS), 1),
        agent=values.get(AGENT, ""),
    )


def _int(text: str | None, default: int) -> int:
    if text is None or len(text) > 30:  # int() of a huge digit string is slow and means nothing here
        return default
    try:
        return int(text)
    except ValueError:
        return default
