"""The ``@agent`` decorator and the list of agents the engine runs.

Agents register themselves when their module is imported; Faust's autodiscovery imports the
``agents`` package at worker start, so the app never names an agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from streams.catalog import TopicSpec
from streams.engine.runner import AgentSpec, AssignedHook, InvalidHandler, RevokedHook
from streams.engine.stream import BatchStream

__all__ = ["agent", "registered_agents"]

_AGENTS: dict[str, AgentSpec] = {}

F = TypeVar("F", bound=Callable[[BatchStream[Any]], Awaitable[None]])


def agent(
    name: str,
    *,
    topic: TopicSpec,
    tables: tuple[str, ...] = (),
    on_invalid: InvalidHandler | None = None,
    on_assigned: AssignedHook | None = None,
    tick_seconds: float | Callable[[Any], float] | None = None,
    on_revoked: RevokedHook | None = None,
    max_records: int | Callable[[Any], int] | None = None,
    fetch_wait_ms: int | Callable[[Any], int] | None = None,
    max_in_flight: int | Callable[[Any], int] | None = None,
) -> Callable[[F], F]:
    """Register an async function over a :class:`BatchStream` as an agent on ``topic``.

    ``on_invalid`` is called for records that fail decoding or validation (after they are
    dead-lettered) so the agent can answer the requester; ``tick_seconds`` makes the stream yield a
    batch at least that often, empty if nothing arrived, for timers such as lock expiry; it may be a
    function of the settings. ``on_revoked`` runs when partitions leave this worker, before
    another worker may take them (an agent with work in flight for them cancels it there).
    ``max_records`` caps the records of one batch (default
    ``SOMA_BATCH_MAX_RECORDS``), for agents whose records are costly (a batch is the unit of commit).
    ``fetch_wait_ms`` bounds how long the broker may hold a fetch with nothing new (default
    ``SOMA_BATCH_WAIT_MS``): an agent a person is waiting on takes a shorter one. ``max_in_flight``
    bounds the records handed out with ``Batch.defer`` and not yet finished: fetching pauses while
    the bound is reached.
    """

    def register(fn: F) -> F:
        if name in _AGENTS and _AGENTS[name].fn is not fn:
            raise ValueError(f"an agent named {name!r} is already registered")
        _AGENTS[name] = AgentSpec(name, topic, fn, tables, on_invalid, on_assigned, tick_seconds,
                                  on_revoked=on_revoked, max_records=max_records, fetch_wait_ms=fetch_wait_ms,
                                  max_in_flight=max_in_flight)
        return fn

    return register


def registered_agents() -> list[AgentSpec]:
    return list(_AGENTS.values())
