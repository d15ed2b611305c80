"""Errors of the agents' business rules (as opposed to failures of outside systems, see connectors)."""

from __future__ import annotations

__all__ = ["AgentError", "JobRejected"]


class AgentError(Exception):
    """Base of the agents' own errors."""


class JobRejected(AgentError):
    """A job breaks a rule no retry can fix (empty text, a document over the size limit, a bad filter).

    ``reason`` is the sentence the requester gets in its ``failed`` result and the DLQ header.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
