"""Helpers for the HTTP views agents serve on the worker's web port (Faust web, ``SOMA_WEB_PORT``).

Agents register views with :func:`page`; the app adds every registered view when it sets up its web
server (:class:`streams.app.SomaApp`), so a module that serves a view never imports the app. A view
that answers from an agent's table can only answer for keys whose partition this worker owns;
:func:`partition_for` tells which partition a key lives on (the Kafka default partitioner, murmur2 of
the key bytes — the one our producers and the Java clients use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import murmur2
from faust.web import View

__all__ = ["page", "partition_for", "registered_views"]

_VIEWS: dict[str, type[View]] = {}


def page(path: str) -> Callable[[Any], type[View]]:
    """Register an ``async def handler(self, request, **path_params)`` view at ``path``."""

    def register(handler: Any) -> type[View]:
        if path in _VIEWS:
            raise ValueError(f"a view at {path!r} is already registered")
        view = View.from_handler(handler)
        view.view_name = handler.__name__
        view.view_path = path
        _VIEWS[path] = view
        return view

    return register


def registered_views() -> list[type[View]]:
    return list(_VIEWS.values())


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default partitioner sends ``key`` to, among ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
