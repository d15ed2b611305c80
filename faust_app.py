"""The Faust app of SomaAgent Streams, its settings, and the ``soma`` command line.

Settings come from environment variables only (twelve-factor), are validated once at start, and a bad
value stops the process with a message naming the variable and what it accepts. Agents and operator
commands are found by Faust's autodiscovery of the ``agents`` and ``streams`` packages; this module
never imports them by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn

import click
import faust
from faust.cli import AppCommand
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Settings", "SettingsError", "SomaCommand", "app", "command", "main", "settings"]

logger = logging.getLogger(__name__)


class SettingsError(Exception):
    """A setting from the environment is missing or out of range."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseModel):
    """Every setting of the system; the field alias is the environment variable that sets it.

    The README's settings table is generated from the descriptions here, so keep them accurate.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        None,
        alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded broker "
        "of the local stack at 127.0.0.1:SOMA_EMBEDDED_BROKER_PORT.",
    )
    embedded_broker_port: int = Field(
        9092, alias="SOMA_EMBEDDED_BROKER_PORT", ge=1, le=65535,
        description="Port of the embedded Tansu broker that `soma dev` starts.",
    )
    app_id: str = Field(
        "soma-streams", alias="SOMA_APP_ID", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Application id: prefix of consumer groups and changelog topics.",
    )
    data_dir: Path = Field(
        Path("./data"), alias="SOMA_DATA_DIR",
        description="Directory for RocksDB state and local Qdrant data.",
    )
    partitions: int = Field(
        4, alias="SOMA_PARTITIONS", ge=1, le=1024,
        description="Partitions of each topic this app creates.",
    )
    replication_factor: int = Field(
        1, alias="SOMA_REPLICATION_FACTOR", ge=1, le=16,
        description="Replication factor of topics this app creates.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", alias="SOMA_LOG_LEVEL", description="Log level: debug, info, warning or error."
    )
    web_port: int = Field(
        6066, alias="SOMA_WEB_PORT", ge=1, le=65535,
        description="HTTP port of the worker (health, metrics).",
    )
    web_enabled: bool = Field(True, alias="SOMA_WEB_ENABLED", description="Serve the worker's HTTP port.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", alias="REDIS_URL", pattern=r"^(redis|rediss|unix)://",
        description="Redis that mirrors lock state (redis://, rediss:// or unix://).",
    )
    redis_timeout_seconds: float = Field(
        0.5, alias="SOMA_REDIS_TIMEOUT_SECONDS", gt=0, le=30,
        description="Socket timeout of Redis calls; a slower Redis is treated as down.",
    )
    admin_roles: list[str] = Field(
        default_factory=lambda: ["admin"], alias="SOMA_ADMIN_ROLES",
        description="Comma-separated roles that may enable/disable training locks.",
    )
    admin_users: list[str] = Field(
        default_factory=list, alias="SOMA_ADMIN_USERS",
        description="Comma-separated users treated as admins whatever their roles.",
    )
    lock_default_ttl_seconds: int = Field(
        86_400, alias="SOMA_LOCK_DEFAULT_TTL_SECONDS", ge=1,
        description="TTL of a training lock when the command gives none (24 h).",
    )
    lock_max_ttl_seconds: int = Field(
        604_800, alias="SOMA_LOCK_MAX_TTL_SECONDS", ge=1, validate_default=True,
        description="Longest TTL a lock may be granted or extended to (7 days).",
    )
    lock_expiry_check_seconds: float = Field(
        1.0, alias="SOMA_LOCK_EXPIRY_CHECK_SECONDS", gt=0, le=60,
        description="How often expired locks are looked for (expiry precision).",
    )
    dedupe_ttl_seconds: int = Field(
        604_800, alias="SOMA_DEDUPE_TTL_SECONDS", ge=60,
        description="How long processed event ids are remembered to drop duplicates.",
    )
    batch_max_records: int = Field(
        2000, alias="SOMA_BATCH_MAX_RECORDS", ge=1, le=100_000,
        description="Most records an agent takes from the broker per batch.",
    )
    batch_wait_ms: int = Field(
        20, alias="SOMA_BATCH_WAIT_MS", ge=0, le=10_000,
        description="Longest time the broker holds a fetch open waiting for a batch to fill.",
    )
    # -- operator tooling (issue 7) ------------------------------------------------------------------
    max_event_bytes: int = Field(
        1_048_576, alias="SOMA_MAX_EVENT_BYTES", ge=256, le=64 * 1_048_576,
        description="Largest event an agent accepts; a bigger one goes to the DLQ (EventTooLarge), "
        "from where it can be re-driven after this limit is raised.",
    )

    _split = field_validator("admin_roles", "admin_users", mode="before")(_split_csv)

    @field_validator("lock_max_ttl_seconds")
    @classmethod
    def _max_not_below_default(cls, value: int, info: Any) -> int:
        default = info.data.get("lock_default_ttl_seconds")
        if default is not None and value < default:
            raise ValueError(f"must be at least SOMA_LOCK_DEFAULT_TTL_SECONDS ({default})")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment; raise :class:`SettingsError` naming each bad variable."""
        environ = os.environ if environ is None else environ
        aliases = {field.alias for field in cls.model_fields.values() if field.alias}
        values = {name: value for name, value in environ.items() if name in aliases and value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(cls, exc)) from None

    @property
    def bootstrap_servers(self) -> str:
        """Where the Kafka cluster is: the configured one, or the embedded broker's address."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    def is_admin(self, user: str, roles: list[str]) -> bool:
        return user in self.admin_users or any(role in self.admin_roles for role in roles)

    @cached_property
    def state_dir(self) -> Path:
        return self.data_dir / self.app_id


def _describe(cls: type[Settings], exc: ValidationError) -> str:
    by_name = dict(cls.model_fields) | {field.alias: field for field in cls.model_fields.values() if field.alias}
    lines = ["invalid settings:"]
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = by_name.get(name)
        variable = field.alias if field and field.alias else name
        got = error.get("input")
        allowed = f" ({field.description})" if field and field.description else ""
        lines.append(f"  {variable}={got!r}: {error['msg']}{allowed}")
    return "\n".join(lines)


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"soma: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load_settings()
# Faust creates only the last level of its datadir; the data dir itself may not exist yet.
settings.data_dir.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
    store="rocksdb://",
    datadir=str(settings.data_dir / "faust"),
    autodiscover=["agents", "streams"],
    origin="faust_app",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    # Measured on the embedded broker: a group joins in ~5 s with these instead of ~30 s.
    broker_rebalance_timeout=3,
    broker_session_timeout=10,
    broker_heartbeat_interval=1,
    web_enabled=settings.web_enabled,
    web_port=settings.web_port,
    web_bind="127.0.0.1",
    producer_linger_ms=5,
)


class SomaCommand(AppCommand):
    """Base of our own commands: run the handler on a plain event loop, not inside a Faust worker.

    Faust runs commands inside a worker service, which turns a usage error into a traceback; our
    commands are clients, so they run like any CLI: clean error message, meaningful exit code.
    """

    abstract = True

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


def command(*options: Any) -> Any:
    """Register an ``async def`` as a ``soma`` subcommand that runs as a plain CLI client."""
    return app.command(*options, base=SomaCommand)


@command()
async def dev(self: Any) -> None:
    """Run the local stack: the embedded broker (when KAFKA_BOOTSTRAP_SERVERS is unset) and a worker."""
    from connectors.local_stack import run_local_stack

    code = run_local_stack(settings.kafka_bootstrap_servers, settings.embedded_broker_port, settings.data_dir)
    raise SystemExit(code)


_FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


def main() -> None:
    """Entry point of the ``soma`` console script: Faust's CLI plus our commands."""
    argv = sys.argv[1:]
    if argv[:1] == ["worker"] and not any(arg in ("-l", "--loglevel") or arg.startswith("--loglevel=")
                                         for arg in argv):
        sys.argv.insert(2, f"--loglevel={_FAUST_LOG_LEVELS[settings.log_level]}")
    app.main()


if __name__ == "__main__":
    # Run the app of the importable module, not of ``__main__``: agents and commands register on
    # ``faust_app.app``, and a second App instance would start with none of them.
    import faust_app

    faust_app.main()
