"""Errors of the streaming layer."""

from __future__ import annotations

__all__ = ["StreamsError", "UnknownTopicError"]


class StreamsError(Exception):
    """Base of every error raised by ``streams``."""


class UnknownTopicError(StreamsError):
    """A topic name that is not in the catalog."""
