"""The baseline of ``tests.perf.bench_locks``: the lock agent written the naive Faust way.

One ``@app.agent`` over the command topic, ``async for event in stream.events()``, a Faust ``Table`` for
the lock state and one for the event ids seen, and an ``await out_topic.send(...)`` per event. The rules
are the real ones (``agents.locks.decide`` / ``expire`` / ``state_event``), so both contestants do the
same work — except that this one does not mirror to Redis, which makes the comparison conservative for
the batch engine.

Run by the benchmark as ``python -m faust -A tests.perf.naive_locks_app worker -l warn`` with:

``NAIVE_BOOTSTRAP``      broker host:port (required)
``NAIVE_APP_ID``         Faust app id, the consumer group and changelog prefix (default ``naive-locks``)
``NAIVE_INPUT_TOPIC``    command topic (default ``naive.lock.commands``)
``NAIVE_OUTPUT_TOPIC``   state topic (default ``naive.lock.state``)
``NAIVE_DATA_DIR``       RocksDB directory (default ``./data/naive``)
``NAIVE_PARTITIONS``     partitions of the topics and tables (default 4)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import faust

from agents.locks import LockPolicy, LockRecord, decide, expire, rejected_key, state_event
from schemas import LockCommand, decode_event, encode_event
from streams.settings import Settings

soma_settings = Settings.from_env()

BOOTSTRAP = os.environ.get("NAIVE_BOOTSTRAP", "127.0.0.1:9092")
APP_ID = os.environ.get("NAIVE_APP_ID", "naive-locks")
INPUT_TOPIC = os.environ.get("NAIVE_INPUT_TOPIC", "naive.lock.commands")
OUTPUT_TOPIC = os.environ.get("NAIVE_OUTPUT_TOPIC", "naive.lock.state")
DATA_DIR = os.environ.get("NAIVE_DATA_DIR", "./data/naive")
PARTITIONS = int(os.environ.get("NAIVE_PARTITIONS", "4"))

app = faust.App(
    APP_ID,
    broker=f"kafka://{BOOTSTRAP}",
    store="rocksdb://",
    datadir=DATA_DIR,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    broker_rebalance_timeout=3,
    broker_session_timeout=10,
    broker_heartbeat_interval=1,
    web_enabled=False,
)

commands_topic = app.topic(
    INPUT_TOPIC, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw",
)
state_topic = app.topic(
    OUTPUT_TOPIC, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw",
)

# Keys are str; values go through the app's default serializer (json).
#: tenant -> LockRecord as a dict
locks = app.Table("locks", default=None, partitions=PARTITIONS, key_type=str)
#: event id -> epoch ms until which it is remembered
seen = app.Table("seen", default=None, partitions=PARTITIONS, key_type=str)

policy = LockPolicy.from_settings(soma_settings)
dedupe_ttl_ms = soma_settings.dedupe_ttl_seconds * 1000


async def _emit(key: str, event: Any) -> None:
    await state_topic.send(key=key.encode(), value=encode_event(event))


@app.agent(commands_topic)
async def naive_locks(stream: Any) -> None:
    async for event in stream.events():
        command = decode_event(event.value, LockCommand)
        if seen.get(command.event_id) is not None:
            continue
        now = int(time.time() * 1000)
        seen[command.event_id] = now + dedupe_ttl_ms
        tenant = command.tenant
        value = locks.get(tenant)
        current = LockRecord() if value is None else LockRecord(**value)
        expired = expire(current, now)
        if expired is not None:
            locks[tenant] = asdict(expired)
            await _emit(tenant, state_event(tenant, expired, "expired", "expire", "TTL passed"))
            current = expired
        outcome = decide(current, command, now, policy)
        if outcome.record is not None:
            locks[tenant] = asdict(outcome.record)
            shown, status = outcome.record, outcome.record.status
        else:
            shown, status = outcome.shown, outcome.status
        out = state_event(tenant, shown, status, command.action, outcome.detail, cause=command)
        await _emit(rejected_key(tenant) if status == "rejected" else tenant, out)
