"""Helpers for the HTTP views agents serve on the worker's web port (Faust web, ``SOMA_WEB_PORT``).

Agents register views with :func:`page` (Faust's ``app.page``) so that they never import the app by
name. A view that answers from an agent's table can only answer for keys whose partition this worker
owns; :func:`partition_for` tells which partition a key lives on (the Kafka default partitioner,
murmur2 of the key bytes — the one our producers and the Java clients use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import murmur2

from faust_app import app

__all__ = ["page", "partition_for"]


def page(path: str) -> Callable[[Any], Any]:
    """Register an ``async def handler(self, request, **path_params)`` view at ``path``."""
    return app.page(path)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default partitioner sends ``key`` to, among ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
