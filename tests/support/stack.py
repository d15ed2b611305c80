"""Real parts for tests and benchmarks: the embedded broker, a Redis server, worker processes.

Nothing here imitates a dependency. When one is missing the harness fails loudly with what to install,
instead of skipping.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.broker import EmbeddedBroker, free_port, port_answers
from connectors.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


class MissingDependency(RuntimeError):
    """A real dependency the suite needs is not available; the message says how to get it."""


def find_or_start_redis(workdir: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    """A real Redis: $REDIS_URL if it answers, else the local service, else a redis-server we start."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        return configured, None
    if port_answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0", None
    if shutil.which("redis-server") is None:
        raise MissingDependency(
            "no Redis: set REDIS_URL, run a Redis on 127.0.0.1:6379, or install redis-server "
            "(apt-get install redis-server)"
        )
    port = free_port()
    process = start_redis_server(port, workdir)
    return f"redis://127.0.0.1:{port}/0", process


def start_redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A private redis-server on a given port (for tests that stop and restart Redis)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingDependency("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", port):
        if time.monotonic() > deadline:
            process.kill()
            raise MissingDependency("redis-server did not start within 10 s")
        time.sleep(0.05)
    return process


class SomaProcess(ManagedProcess):
    """A ``soma`` subcommand as the tests run it: a fresh log per start in ``workdir``, the repo as cwd.

    Start failures raise ``RuntimeError`` (it exited) and ``TimeoutError`` (not ready in time), and
    quote a long log tail: a test failing at startup should say why without opening the log.
    """

    start_error = RuntimeError
    not_ready_error = TimeoutError
    stop_timeout = 20.0
    error_tail_lines = 60
    #: The ``soma`` subcommand, also what the process is called in messages.
    subcommand: str
    workdir: Path

    @property
    def label(self) -> str:
        return self.subcommand

    @abc.abstractmethod
    def env(self) -> dict[str, str]:
        """The child's environment."""

    def spawn_soma(self, *options: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.subcommand}-{int(time.time() * 1000)}.log"
        self.spawn([sys.executable, "-m", "faust_app", self.subcommand, *options], env=self.env(), cwd=REPO_ROOT)


@dataclass
class WorkerProcess(SomaProcess):
    """``soma worker`` in its own process, with its own app id, data dir and ports."""

    bootstrap: str
    redis_url: str
    workdir: Path
    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    subcommand = "worker"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "SOMA_APP_ID": self.app_id,
            "SOMA_DATA_DIR": str(self.workdir / "data"),
            "SOMA_WEB_PORT": str(free_port()),
            "SOMA_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerProcess:
        self.spawn_soma("-l", "info")
        return self

    def wait_ready(self, agent: str = "locks", timeout: float = 90.0) -> None:
        """Block until the agent logged that it owns its partitions."""
        self.wait_until_ready(timeout, line=f"agent {agent}: ready on partitions")


def start_broker(workdir: Path) -> EmbeddedBroker:
    """The embedded Tansu broker on a free port."""
    try:
        return EmbeddedBroker(log_path=workdir / "broker.log").start()
    except Exception as exc:
        raise MissingDependency(f"cannot start the embedded broker: {exc}") from exc


async def produce_raw(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send (key, value) pairs and wait for the broker's acknowledgements."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value, headers=headers or []) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Consumed:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class TopicReader:
    """Reads every partition of topics from the beginning, without a consumer group."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.consumer: AIOKafkaConsumer | None = None
        self.seen: list[Consumed] = []

    async def start(self) -> TopicReader:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest")
        await self.consumer.start()
        await self.consumer.topics()
        tps = []
        for topic in self.topics:
            partitions = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        return self

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> list[Consumed]:
        assert self.consumer is not None
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        new = [
            Consumed(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, list(m.headers or ()))
            for messages in fetched.values() for m in messages
        ]
        self.seen.extend(new)
        return new

    async def wait_for(self, predicate: Any, timeout: float = 30.0, count: int = 1) -> list[Consumed]:
        """Poll until ``count`` records (seen so far included) satisfy ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            matched = [record for record in self.seen if predicate(record)]
            if len(matched) >= count:
                return matched
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(matched)} of {count} expected records after {timeout} s "
                    f"({len(self.seen)} records seen on {self.topics})"
                )
            await self.poll()


def json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
