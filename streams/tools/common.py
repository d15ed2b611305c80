"""Plumbing every operator command shares: error mapping, JSON output, progress bars, common options."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from aiokafka.errors import KafkaError
from faust.cli import option

from streams.tools.exceptions import ArgumentError, ToolError

__all__ = [
    "FILTER_OPTIONS",
    "JSON_OPTION",
    "emit_json",
    "progress",
    "tool_errors",
    "wants_json",
]

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def tool_errors(handler: F) -> F:
    """Map our errors to click's: a bad option value exits 2 with usage, a refused action exits 1."""

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> None:
        try:
            await handler(*args, **kwargs)
        except ArgumentError as exc:
            raise click.UsageError(str(exc)) from None
        except ToolError as exc:
            raise click.ClickException(str(exc)) from None
        except KafkaError as exc:
            raise click.ClickException(f"Kafka error: {exc}") from None

    return run  # type: ignore[return-value]


def wants_json(command: Any, flag: bool) -> bool:
    """``--json`` after the command, or Faust's global ``soma --json COMMAND``."""
    return bool(flag or getattr(command, "json", False))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


@contextmanager
def progress(length: int, label: str) -> Iterator[Any]:
    """A progress bar on stderr (stdout stays clean for JSON); drawn only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield _NoBar()
        return
    with click.progressbar(length=max(length, 0), label=label, file=sys.stderr, show_pos=True,
                           show_percent=True) as bar:
        yield bar


class _NoBar:
    length = 0

    def update(self, steps: int) -> None:
        pass


JSON_OPTION = option("--json", "as_json", is_flag=True, default=False,
                     help="Print one machine-readable JSON document (or JSON lines) instead of text.")

#: The record filters tail, replay and dlq share (see ``streams.tools.selection.RecordFilter``).
FILTER_OPTIONS = (
    option("--partition", "-p", "partitions", type=int, multiple=True,
           help="Only this partition (repeat for more)."),
    option("--key", "keys", multiple=True, help="Only records with this key (repeat: any of them)."),
    option("--tenant", "tenants", multiple=True,
           help="Only events of this tenant (repeat: any of them); decodes each value."),
    option("--header", "headers", multiple=True, metavar="NAME=VALUE",
           help="Only records with this header value (repeat: all must match)."),
    option("--field", "fields", multiple=True, metavar="PATH=VALUE",
           help="Only events whose field has this value, e.g. action=enable or memory.top_k=5; a list "
                "field matches when it contains VALUE (repeat: all must match)."),
    option("--since", default=None, metavar="TIME",
           help="Only records with a timestamp at or after TIME: ISO-8601, epoch ms, today, yesterday, "
                "or a duration ago such as 2h, 1d, 1h30m."),
    option("--until", default=None, metavar="TIME", help="Only records with a timestamp at or before TIME."),
)
