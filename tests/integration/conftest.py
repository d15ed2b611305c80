"""Integration fixtures: a real embedded broker, a real Redis, real worker processes.

A missing dependency fails the run with what to install; nothing is skipped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from connectors.broker import EmbeddedBroker
from schemas import ConversationTurn, LockState, TurnEvent, decode_event, encode_event, new_event_id
from schemas.locks import LockCommand
from streams.catalog import CONVERSATION_EVENTS, CONVERSATION_TURNS, LOCK_COMMANDS, LOCK_STATE, USAGE_EVENTS
from tests.support.stack import (
    MissingDependency,
    TopicReader,
    WorkerProcess,
    find_or_start_redis,
    produce_raw,
    start_broker,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, process = find_or_start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Stack:
    """One broker and the workers running against it."""

    broker: EmbeddedBroker
    redis_url: str
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def worker(self, app_id: str | None = None, **env: str) -> WorkerProcess:
        worker = WorkerProcess(self.bootstrap, env.pop("REDIS_URL", self.redis_url), self.workdir / "worker",
                               extra_env=env)
        if app_id:
            worker.app_id = app_id
        self.workers.append(worker)
        return worker.start()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.broker.stop()


@pytest.fixture
def stack_factory(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Callable[[], Stack]]:
    """Fresh broker per call: tests that kill workers don't disturb each other's topics."""
    stacks: list[Stack] = []

    def make() -> Stack:
        workdir = tmp_path_factory.mktemp("stack")
        stack = Stack(start_broker(workdir), redis_url, workdir)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(scope="module")
def lock_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """A broker with one lock worker, shared by the tests of a module (each uses its own tenants)."""
    workdir = tmp_path_factory.mktemp("lockstack")
    stack = Stack(start_broker(workdir), redis_url, workdir)
    try:
        worker = stack.worker(SOMA_LOCK_MAX_TTL_SECONDS="864000")
        worker.wait_ready("locks")
        yield stack
    finally:
        stack.close()


class LockClient:
    """Sends lock commands and waits for the state events that answer them."""

    def __init__(self, bootstrap: str, reader: TopicReader, dlq_reader: TopicReader) -> None:
        self.bootstrap = bootstrap
        self.reader = reader
        self.dlq = dlq_reader

    async def send(self, *commands: dict[str, Any]) -> list[str]:
        ids = []
        messages = []
        for payload in commands:
            command = LockCommand.model_validate({"event_id": new_event_id(), **payload})
            ids.append(command.event_id)
            messages.append((command.tenant.encode(), encode_event(command)))
        await produce_raw(self.bootstrap, LOCK_COMMANDS.name, messages)
        return ids

    async def send_raw(self, key: bytes | None, value: bytes) -> None:
        await produce_raw(self.bootstrap, LOCK_COMMANDS.name, [(key, value)])

    def states(self, tenant: str) -> list[LockState]:
        events = [decode_event(record.value or b"", LockState) for record in self.reader.seen]
        return [event for event in events if event.tenant == tenant]

    async def answer(self, command_id: str, timeout: float = 30.0) -> LockState:
        def answers(record: Any) -> bool:
            return decode_event(record.value, LockState).causation_id == command_id

        records = await self.reader.wait_for(answers, timeout=timeout)
        return decode_event(records[0].value or b"", LockState)

    async def ask(self, payload: dict[str, Any], timeout: float = 30.0) -> LockState:
        (command_id,) = await self.send(payload)
        return await self.answer(command_id, timeout)


@pytest.fixture
async def lock_client_factory() -> AsyncIterator[Callable[[str], Any]]:
    readers: list[TopicReader] = []

    async def make(bootstrap: str) -> LockClient:
        reader = await TopicReader(bootstrap, LOCK_STATE.name).start()
        dlq = await TopicReader(bootstrap, LOCK_COMMANDS.dlq).start()
        readers.extend([reader, dlq])
        return LockClient(bootstrap, reader, dlq)

    yield make
    for reader in readers:
        await reader.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


ADMIN = {"user": "ann", "roles": ["admin"]}
OTHER_ADMIN = {"user": "bob", "roles": ["admin"]}



# -- conversation: a real llama.cpp model server ----------------------------------------------------


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The embedded llama.cpp server on SmolLM2-135M-Instruct, shared by the session's tests."""
    from connectors.model_server import EmbeddedModelServer

    server = EmbeddedModelServer(log_path=tmp_path_factory.mktemp("llm") / "model-server.log")
    try:
        server.start()
    except Exception as exc:
        raise MissingDependency(f"cannot start the embedded model server: {exc}") from exc
    yield server
    server.stop()


@pytest.fixture
def model_server_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Model servers of a test's own, to kill or to start late (on a given port); all stopped afterwards."""
    from connectors.model_server import EmbeddedModelServer

    started: list[EmbeddedModelServer] = []

    def make(port: int | None = None) -> EmbeddedModelServer:
        server = EmbeddedModelServer(port=port, log_path=tmp_path / f"model-server-{len(started)}.log")
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


class TurnClient:
    """Sends conversation turns and reads the TurnEvents (and DLQ entries) that answer them."""

    def __init__(self, bootstrap: str, events: TopicReader, dlq: TopicReader, usage: TopicReader) -> None:
        self.bootstrap = bootstrap
        self.events = events
        self.dlq = dlq
        self.usage = usage

    async def send(self, payload: dict[str, Any]) -> ConversationTurn:
        turn = ConversationTurn.model_validate({"event_id": new_event_id(), **payload})
        await produce_raw(self.bootstrap, CONVERSATION_TURNS.name, [(turn.session_id.encode(), encode_event(turn))])
        return turn

    def answers(self, turn_id: str) -> list[TurnEvent]:
        """Every event of a turn seen so far, in topic order (one session = one partition)."""
        records = sorted(self.events.seen, key=lambda record: record.offset)
        events = [decode_event(record.value or b"", TurnEvent) for record in records]
        return [event for event in events if event.turn_id == turn_id]

    async def finished(self, turn_id: str, timeout: float = 90.0) -> TurnEvent:
        """The ``completed`` or ``failed`` event of a turn."""
        def terminal(record: Any) -> bool:
            event = decode_event(record.value or b"", TurnEvent)
            return event.turn_id == turn_id and event.type in ("completed", "failed")

        records = await self.events.wait_for(terminal, timeout=timeout)
        return decode_event(records[0].value or b"", TurnEvent)

    async def ask(self, payload: dict[str, Any], timeout: float = 90.0) -> tuple[ConversationTurn, TurnEvent]:
        turn = await self.send(payload)
        return turn, await self.finished(turn.event_id, timeout)


@pytest.fixture
async def turn_client_factory() -> AsyncIterator[Callable[[str], Any]]:
    readers: list[TopicReader] = []

    async def make(bootstrap: str) -> TurnClient:
        events = await TopicReader(bootstrap, CONVERSATION_EVENTS.name).start()
        dlq = await TopicReader(bootstrap, CONVERSATION_TURNS.dlq).start()
        usage = await TopicReader(bootstrap, USAGE_EVENTS.name).start()
        readers.extend([events, dlq, usage])
        return TurnClient(bootstrap, events, dlq, usage)

    yield make
    for reader in readers:
        await reader.stop()


#: Made-up prices for the embedded model, so that cost is a number a test can check (the shipped price is 0).
TEST_PRICES = {"models": {"smollm2-135m-instruct": {"input": 2.0, "cached": 1.0, "output": 8.0}}}


def write_test_prices(directory: Path) -> Path:
    path = directory / "prices.json"
    path.write_text(json.dumps(TEST_PRICES))
    return path
