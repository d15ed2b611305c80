"""Errors of the clients of outside systems, so callers can tell 'the dependency failed' apart."""

from __future__ import annotations

__all__ = ["BrokerStartError", "ConnectorError", "DependencyUnavailable"]


class ConnectorError(Exception):
    """Base of every connector error."""


class BrokerStartError(ConnectorError):
    """The embedded broker could not be started or did not answer in time."""


class DependencyUnavailable(ConnectorError):
    """An outside system (Redis, the LLM, Qdrant) did not answer after its retries."""
