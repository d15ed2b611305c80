"""The Faust app of SomaAgent Streams and the ``soma`` command line: the process's entry point.

This is the one module that reads the environment (through :meth:`Settings.from_env`, defined with its
sections in ``streams/settings/``) and builds the ``faust.App``; a bad value stops the process with a
message naming the variable and what it accepts. Agents and operator commands are found by Faust's
autodiscovery of the ``agents`` and ``streams`` packages; this module never imports them by name.
"""

from __future__ import annotations

import logging
import sys

import click

from streams.app import SomaApp, create_app
from streams.cli import SomaCommand, command
from streams.settings import Settings, SettingsError

__all__ = ["app", "main", "settings"]

logger = logging.getLogger(__name__)


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"soma: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load_settings()

app: SomaApp = create_app(settings)


@command()
async def dev(self: SomaCommand) -> None:
    """Run the local stack: the embedded broker (when KAFKA_BOOTSTRAP_SERVERS is unset), the embedded model
    server (when OPENAI_BASE_URL is unset) and a worker; Ctrl-C stops them all."""
    from connectors.exceptions import ConnectorError
    from connectors.local_stack import run_local_stack

    settings = self.settings
    try:
        code = run_local_stack(settings.kafka_bootstrap_servers, settings.embedded_broker_port, settings.data_dir,
                               llm_base_url=settings.openai_base_url,
                               embedded_model_port=settings.embedded_model_port)
    except ConnectorError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


_FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


def main() -> None:
    """Entry point of the ``soma`` console script: Faust's CLI plus our commands."""
    # Faust creates only the last level of its datadir; the data dir itself may not exist yet.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:]
    if argv[:1] == ["worker"] and not any(arg in ("-l", "--loglevel") or arg.startswith("--loglevel=")
                                         for arg in argv):
        sys.argv.insert(2, f"--loglevel={_FAUST_LOG_LEVELS[settings.log_level]}")
    app.main()


if __name__ == "__main__":
    # Run the app of the importable module, not of ``__main__``: a second App (and engine) would be built.
    import faust_app

    faust_app.main()
