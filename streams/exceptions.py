"""Errors of the streaming layer."""

from __future__ import annotations

from schemas.exceptions import DecodeError

__all__ = ["EventTooLarge", "KeyMismatch", "OutputTooLarge", "StreamsError", "UnknownTopicError"]


class StreamsError(Exception):
    """Base of every error raised by ``streams``."""


class UnknownTopicError(StreamsError):
    """A topic name that is not in the catalog."""


class EventTooLarge(DecodeError):
    """An input event is bigger than ``SOMA_MAX_EVENT_BYTES``; it is refused before it is parsed.

    A :class:`~schemas.exceptions.DecodeError` so the engine treats it like any unreadable input: the
    original bytes go to the DLQ with the reason, and the agent's invalid-input handler can answer.
    """


class KeyMismatch(StreamsError):
    """A record's Kafka key is not the field its topic is keyed by, even after it was re-routed once."""


class OutputTooLarge(StreamsError):
    """An output message does not fit in one producer batch; it can never be sent as it is."""
