"""Errors of the agents' own logic: files they read and rules they enforce (not outside systems: see connectors)."""

from __future__ import annotations

__all__ = [
    "AgentsError",
    "BudgetFileError",
    "JobRejected",
    "LateEventError",
    "PriceTableError",
    "TurnRefused",
    "UsageEventError",
]


class AgentsError(Exception):
    """Base of every error raised by ``agents``."""


class PriceTableError(AgentsError):
    """The price table (shipped or override file) is unreadable or holds an invalid entry."""


class BudgetFileError(AgentsError):
    """The budgets file is unreadable or holds an invalid entry."""


class UsageEventError(AgentsError):
    """A usage event that passed schema validation but cannot be accounted (dead-lettered with this reason)."""


class LateEventError(UsageEventError):
    """A usage event whose window closed more than the grace period ago (dead-lettered with this reason)."""


class JobRejected(AgentsError):
    """A job breaks a rule no retry can fix (empty text, a document over the size limit, a bad filter).

    ``reason`` is the sentence the requester gets in its ``failed`` result and the DLQ header.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TurnRefused(AgentsError):
    """A turn not answered by policy or limit (not a dependency failure): the message says why."""
