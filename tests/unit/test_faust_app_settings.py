"""Settings from the environment: defaults, validation errors naming the variable, the CLI exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import faust_app
from streams.settings import Settings, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    """``settings_factory(VAR=value, ...)``: settings from exactly that environment."""

    def make(**environ: str) -> Settings:
        return Settings.from_env(environ)

    return make


def test_defaults_with_empty_environment(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()

    assert settings.kafka_bootstrap_servers is None
    assert settings.uses_embedded_broker
    assert settings.embedded_broker_port == 9092
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.app_id == "soma-streams"
    assert settings.data_dir == Path("./data")
    assert settings.state_dir == Path("./data") / "soma-streams"
    assert settings.partitions == 4
    assert settings.replication_factor == 1
    assert settings.log_level == "info"
    assert settings.web_enabled is True
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.admin_roles == ["admin"]
    assert settings.admin_users == []
    assert settings.lock_default_ttl_seconds == 86_400  # 24 h, as the architecture says
    assert settings.lock_max_ttl_seconds >= settings.lock_default_ttl_seconds
    assert settings.dedupe_ttl_seconds >= 60


def test_from_env_reads_the_process_environment_when_given_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMA_PARTITIONS", "7")

    assert Settings.from_env().partitions == 7


def test_values_are_parsed_from_strings(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(
        KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092",
        SOMA_PARTITIONS="12",
        SOMA_LOG_LEVEL="debug",
        SOMA_WEB_ENABLED="false",
        SOMA_REDIS_TIMEOUT_SECONDS="2.5",
        REDIS_URL="rediss://cache:6380/1",
        SOMA_LOCK_DEFAULT_TTL_SECONDS="60",
        SOMA_LOCK_MAX_TTL_SECONDS="60",
        SOMA_DATA_DIR="/var/lib/soma",
        SOMA_APP_ID="tenant-a.prod_1",
    )

    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert not settings.uses_embedded_broker
    assert settings.partitions == 12
    assert settings.log_level == "debug"
    assert settings.web_enabled is False
    assert settings.redis_timeout_seconds == 2.5
    assert settings.redis_url == "rediss://cache:6380/1"
    assert settings.lock_default_ttl_seconds == settings.lock_max_ttl_seconds == 60
    assert settings.state_dir == Path("/var/lib/soma/tenant-a.prod_1")


def test_bootstrap_falls_back_to_embedded_broker_port(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(SOMA_EMBEDDED_BROKER_PORT="19093")

    assert settings.uses_embedded_broker
    assert settings.bootstrap_servers == "127.0.0.1:19093"


def test_empty_values_mean_unset(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(
        KAFKA_BOOTSTRAP_SERVERS="",
        SOMA_PARTITIONS="",
        SOMA_LOG_LEVEL="",
        REDIS_URL="",
        SOMA_ADMIN_ROLES="",
        SOMA_EMBEDDED_BROKER_PORT="",
    )

    assert settings == settings_factory()
    assert settings.uses_embedded_broker
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.admin_roles == ["admin"]


def test_unrelated_variables_are_ignored(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(PATH="/usr/bin", partitions="99", HOME="/root")

    assert settings.partitions == 4


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SOMA_ADMIN_ROLES", "admin,ops", ["admin", "ops"]),
        ("SOMA_ADMIN_ROLES", " admin , ops ,, ", ["admin", "ops"]),
        ("SOMA_ADMIN_ROLES", "trainer", ["trainer"]),
        ("SOMA_ADMIN_USERS", "alice,bob", ["alice", "bob"]),
        ("SOMA_ADMIN_USERS", "alice, bob,", ["alice", "bob"]),
    ],
)
def test_comma_separated_lists(
    variable: str, value: str, expected: list[str], settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(**{variable: value})

    field = "admin_roles" if variable == "SOMA_ADMIN_ROLES" else "admin_users"
    assert getattr(settings, field) == expected


def test_is_admin_uses_roles_and_users(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(SOMA_ADMIN_ROLES="ops", SOMA_ADMIN_USERS="root")

    assert settings.is_admin("anyone", ["viewer", "ops"])
    assert settings.is_admin("root", [])
    assert not settings.is_admin("anyone", ["admin"])
    assert not settings.is_admin("anyone", [])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SOMA_PARTITIONS", "0"),
        ("SOMA_PARTITIONS", "abc"),
        ("SOMA_PARTITIONS", "-3"),
        ("SOMA_PARTITIONS", "100000"),
        ("SOMA_LOG_LEVEL", "loud"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("SOMA_EMBEDDED_BROKER_PORT", "0"),
        ("SOMA_EMBEDDED_BROKER_PORT", "65536"),
        ("SOMA_WEB_PORT", "port"),
        ("SOMA_WEB_ENABLED", "maybe"),
        ("SOMA_APP_ID", "has space"),
        ("SOMA_REDIS_TIMEOUT_SECONDS", "0"),
        ("SOMA_LOCK_DEFAULT_TTL_SECONDS", "0"),
        ("SOMA_LOCK_EXPIRY_CHECK_SECONDS", "-1"),
        ("SOMA_DEDUPE_TTL_SECONDS", "5"),
        ("SOMA_BATCH_MAX_RECORDS", "0"),
    ],
)
def test_bad_value_raises_settings_error_naming_the_variable(
    variable: str, value: str, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_factory(**{variable: value})

    message = str(caught.value)
    assert variable in message
    assert repr(value) in message


def test_every_bad_variable_is_named(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_factory(SOMA_PARTITIONS="abc", SOMA_LOG_LEVEL="loud", SOMA_WEB_PORT="6066")

    message = str(caught.value)
    assert "SOMA_PARTITIONS" in message
    assert "SOMA_LOG_LEVEL" in message
    assert "SOMA_WEB_PORT" not in message  # the good one is not blamed


def test_max_ttl_below_default_ttl_is_rejected(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_factory(SOMA_LOCK_DEFAULT_TTL_SECONDS="3600", SOMA_LOCK_MAX_TTL_SECONDS="3599")

    message = str(caught.value)
    assert "SOMA_LOCK_MAX_TTL_SECONDS" in message
    assert "SOMA_LOCK_DEFAULT_TTL_SECONDS" in message


def test_default_ttl_above_the_default_max_ttl_is_rejected(settings_factory: Callable[..., Settings]) -> None:
    # Only the default TTL is set, above the (unset, default) maximum of 7 days: every `enable`
    # without ttl_seconds would then be refused, so the settings must not be accepted.
    default_max = Settings.model_fields["lock_max_ttl_seconds"].default

    with pytest.raises(SettingsError) as caught:
        settings_factory(SOMA_LOCK_DEFAULT_TTL_SECONDS=str(default_max + 1))

    message = str(caught.value)
    assert "SOMA_LOCK_DEFAULT_TTL_SECONDS" in message or "SOMA_LOCK_MAX_TTL_SECONDS" in message


def test_error_message_says_what_the_variable_accepts(settings_factory: Callable[..., Settings]) -> None:
    # The module promises "a message naming the variable and what it accepts"; _describe appends the
    # field's description for that purpose.
    with pytest.raises(SettingsError) as caught:
        settings_factory(SOMA_PARTITIONS="0")

    description = Settings.model_fields["partitions"].description
    assert description
    assert description in str(caught.value)


def test_settings_are_frozen(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()

    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        settings.partitions = 9
    assert settings.partitions == 4


def test_module_exposes_loaded_settings_and_app() -> None:
    assert isinstance(faust_app.settings, Settings)
    assert faust_app.app.conf.id == faust_app.settings.app_id


def test_worker_with_bad_setting_exits_with_code_2_naming_the_variable() -> None:
    env = {**os.environ, "SOMA_PARTITIONS": "0"}

    result = subprocess.run(
        [sys.executable, "-m", "faust_app", "worker"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=10,  # it must fail fast, not hang starting a worker
    )

    assert result.returncode == 2, result.stderr
    assert "SOMA_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr
