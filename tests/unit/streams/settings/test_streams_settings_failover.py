"""Failover settings: group session, static membership and the worker's stable id, and where they are used."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from connectors import local_stack
from connectors.broker import free_port
from streams.kafka import consumer_factory
from streams.settings import Settings, SettingsError


def test_defaults_are_dynamic_membership_with_a_session_every_kafka_accepts() -> None:
    settings = Settings.from_env({})
    assert settings.session_timeout_ms == 10_000 and settings.heartbeat_interval_ms == 1000
    assert not settings.static_membership
    assert settings.group_instance_id("locks") is None


def test_heartbeats_go_every_third_of_a_short_session() -> None:
    assert Settings.from_env({"SOMA_SESSION_TIMEOUT_MS": "2000"}).heartbeat_interval_ms == 666
    assert Settings.from_env({"SOMA_SESSION_TIMEOUT_MS": "1000"}).heartbeat_interval_ms == 333
    with pytest.raises(SettingsError, match="SOMA_SESSION_TIMEOUT_MS"):
        Settings.from_env({"SOMA_SESSION_TIMEOUT_MS": "999"})


def test_static_members_get_one_id_per_agent_that_survives_a_restart(tmp_path: Path) -> None:
    env = {"SOMA_STATIC_MEMBERSHIP": "true", "SOMA_DATA_DIR": str(tmp_path / "a")}
    first, again = Settings.from_env(env), Settings.from_env(env)
    assert first.group_instance_id("locks") == again.group_instance_id("locks")
    assert first.group_instance_id("locks") != first.group_instance_id("usage")
    assert first.group_instance_id("locks") == f"{first.stable_worker_id}.locks"
    other_dir = Settings.from_env({**env, "SOMA_DATA_DIR": str(tmp_path / "b")})
    assert other_dir.stable_worker_id != first.stable_worker_id, "two workers on one host need two ids"


def test_worker_id_can_be_given_and_is_validated() -> None:
    settings = Settings.from_env({"SOMA_STATIC_MEMBERSHIP": "true", "SOMA_WORKER_ID": "worker-0"})
    assert settings.group_instance_id("locks") == "worker-0.locks"
    with pytest.raises(SettingsError, match="SOMA_WORKER_ID"):
        Settings.from_env({"SOMA_WORKER_ID": "has space"})


async def test_consumers_use_the_session_and_a_given_instance_id() -> None:
    settings = Settings.from_env({"SOMA_SESSION_TIMEOUT_MS": "3000"})
    consumer = consumer_factory(settings, group_id="g", group_instance_id="w.locks")
    assert consumer._coordinator is None  # not started: nothing is sent anywhere
    assert consumer._session_timeout_ms == 3000 and consumer._heartbeat_interval_ms == 1000
    assert consumer._group_instance_id == "w.locks"
    plain = consumer_factory(settings, group_id=None)
    assert plain._group_instance_id is None


_REAL_POPEN = subprocess.Popen


class _Worker:
    """Stands in for the worker process only (the broker is real): records the environment it was given."""

    started: list[dict[str, str]] = []

    def __new__(cls, args: list[str], **kwargs: Any) -> Any:
        if "faust_app" not in args:
            return _REAL_POPEN(args, **kwargs)
        cls.started.append(kwargs["env"])
        return super().__new__(cls)

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return 0


@pytest.mark.parametrize("given", [None, "12000"])
def test_soma_dev_runs_its_worker_with_a_short_session_on_the_broker_it_started(
    given: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "Popen", _Worker)
    if given is None:
        monkeypatch.delenv("SOMA_SESSION_TIMEOUT_MS", raising=False)
    else:
        monkeypatch.setenv("SOMA_SESSION_TIMEOUT_MS", given)
    _Worker.started = []
    code = local_stack.run_local_stack(None, free_port(), tmp_path, llm_base_url="http://127.0.0.1:1/v1")
    assert code == 0
    (env,) = _Worker.started
    assert env["SOMA_SESSION_TIMEOUT_MS"] == (given or str(local_stack.EMBEDDED_SESSION_TIMEOUT_MS))


def test_soma_dev_leaves_the_session_alone_on_a_kafka_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _Worker)
    monkeypatch.delenv("SOMA_SESSION_TIMEOUT_MS", raising=False)
    _Worker.started = []
    local_stack.run_local_stack("kafka.example:9092", 9092, tmp_path, llm_base_url="http://127.0.0.1:1/v1")
    (env,) = _Worker.started
    assert "SOMA_SESSION_TIMEOUT_MS" not in env
