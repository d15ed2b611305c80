"""The ``@agent`` decorator and the list of agents the engine runs.

Agents register themselves when their module is imported; Faust's autodiscovery imports the
``agents`` package at worker start, so the app never names an agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from streams.catalog import TopicSpec
from streams.engine.context import AgentContext
from streams.engine.runner import AgentRunner, AgentSpec, InvalidHandler
from streams.engine.stream import BatchStream
from streams.settings import Settings

__all__ = ["agent", "registered_agents", "running_agent", "running_agents", "set_running"]

_AGENTS: dict[str, AgentSpec] = {}
#: The runners of this worker process's engine, by agent name, while it runs (for HTTP views).
_RUNNING: dict[str, AgentRunner] = {}

F = TypeVar("F", bound=Callable[[BatchStream[Any], Any], Awaitable[None]])


def agent(
    name: str,
    *,
    topic: TopicSpec,
    tables: tuple[str, ...] = (),
    context: type[AgentContext] = AgentContext,
    on_invalid: InvalidHandler | None = None,
    tick_seconds: float | Callable[[Settings], float] | None = None,
    max_records: int | Callable[[Settings], int] | None = None,
    fetch_wait_ms: int | Callable[[Settings], int] | None = None,
    max_in_flight: int | Callable[[Settings], int] | None = None,
) -> Callable[[F], F]:
    """Register ``async def fn(stream, context)`` as an agent on ``topic``.

    ``context`` is the :class:`~streams.engine.context.AgentContext` subclass the engine creates for
    each run of the agent (its objects, and its ``assigned``/``revoked`` rebalance hooks).
    ``on_invalid`` is called for records that fail decoding or validation (after they are
    dead-lettered) so the agent can answer the requester; ``tick_seconds`` makes the stream yield a
    batch at least that often, empty if nothing arrived, for timers such as lock expiry; it may be a
    function of the settings. ``max_records`` caps the records of one batch (default
    ``SOMA_BATCH_MAX_RECORDS``), for agents whose records are costly (a batch is the unit of commit).
    ``fetch_wait_ms`` bounds how long the broker may hold a fetch with nothing new (default
    ``SOMA_BATCH_WAIT_MS``): an agent a person is waiting on takes a shorter one. ``max_in_flight``
    bounds the records handed out with ``Batch.defer`` and not yet finished: fetching pauses while
    the bound is reached.
    """

    def register(fn: F) -> F:
        if name in _AGENTS and _AGENTS[name].fn is not fn:
            raise ValueError(f"an agent named {name!r} is already registered")
        _AGENTS[name] = AgentSpec(name, topic, fn, tables, context=context, on_invalid=on_invalid,
                                  tick_seconds=tick_seconds, max_records=max_records, fetch_wait_ms=fetch_wait_ms,
                                  max_in_flight=max_in_flight)
        return fn

    return register


def registered_agents() -> list[AgentSpec]:
    return list(_AGENTS.values())


def set_running(runners: list[AgentRunner]) -> None:
    """Called by the engine when it starts (its runners) and stops (none)."""
    _RUNNING.clear()
    _RUNNING.update({runner.name: runner for runner in runners})


def running_agent(name: str) -> AgentRunner | None:
    """The runner of agent ``name`` in this worker process, if its engine runs it."""
    return _RUNNING.get(name)


def running_agents() -> list[AgentRunner]:
    """Every runner of this worker process's engine while it runs."""
    return list(_RUNNING.values())
