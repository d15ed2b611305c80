"""Errors of the operator commands.

Helpers raise these; the commands map them to click errors so the CLI exits with a message and a
meaningful status: :class:`ArgumentError` → usage error (exit 2), :class:`ToolError` → error (exit 1).
"""

from __future__ import annotations

from streams.exceptions import StreamsError

__all__ = ["ArgumentError", "BrokerUnavailable", "GroupActive", "ToolError"]


class ToolError(StreamsError):
    """An operator command cannot do what was asked (missing topic, broker answer, refused action)."""


class ArgumentError(ToolError):
    """An option value that cannot be understood (a time, a rate, NAME=VALUE)."""


class BrokerUnavailable(ToolError):
    """The Kafka cluster did not answer."""


class GroupActive(ToolError):
    """A consumer group has live members, so its offsets must not be changed under them."""
