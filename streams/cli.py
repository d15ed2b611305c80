"""How a module adds a ``soma`` subcommand: :func:`command`, and the :class:`SomaCommand` it runs as.

Faust registers an ``AppCommand`` subclass with its command line when the class is created, so a
command needs no app at import; it finds the process's settings through the app it runs in
(:attr:`SomaCommand.settings`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click
from faust.cli import AppCommand

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.app import SomaApp

__all__ = ["SomaCommand", "command"]


class SomaCommand(AppCommand):
    """Base of our own commands: run the handler on a plain event loop, not inside a Faust worker.

    Faust runs commands inside a worker service, which turns a usage error into a traceback; our
    commands are clients, so they run like any CLI: clean error message, meaningful exit code.
    """

    abstract = True

    @property
    def settings(self) -> Settings:
        """The settings of this process (the ones its app was built from)."""
        return cast("SomaApp", self.app).settings

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        args = self.args + args
        kwargs = {**self.kwargs, **kwargs}
        try:
            asyncio.run(self.run(*args, **kwargs))
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        raise SystemExit(0)


def command(*options: Any) -> Callable[[Callable[..., Awaitable[Any]]], type[AppCommand]]:
    """Register ``async def name(self: SomaCommand, ...)`` as ``soma name``, run as a plain CLI client."""
    return SomaCommand.from_handler(*options)
