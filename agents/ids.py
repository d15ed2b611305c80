"""Deterministic ids of events an agent derives from another event.

A module of its own (no agent in it), so that importing it does not register an agent and change the
order the engine starts them in.
"""

from __future__ import annotations

import uuid

__all__ = ["USAGE_ID_NAMESPACE", "usage_event_id"]

#: Namespace of :func:`usage_event_id` (uuid5).
USAGE_ID_NAMESPACE = uuid.UUID("0c7a3f52-9d1e-5b8a-a4f6-2e91d3c5b708")


def usage_event_id(source_event_id: str, kind: str) -> str:
    """The ``event_id`` of the usage event an agent derives from ``source_event_id`` (a turn, a job).

    Deterministic (uuid5), so processing the same turn or job again yields the same id and the usage
    agent, which deduplicates by ``event_id``, counts it once.
    """
    return str(uuid.uuid5(USAGE_ID_NAMESPACE, f"{source_event_id}:{kind}"))
