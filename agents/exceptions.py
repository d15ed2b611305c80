"""Errors of the agents' own logic (configuration files they read, rules they enforce)."""

from __future__ import annotations

__all__ = ["AgentsError", "BudgetFileError", "LateEventError", "PriceTableError", "UsageEventError"]


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
