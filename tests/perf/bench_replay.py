"""Replay throughput, topic → topic: ``soma replay`` against a minimal librdkafka consume → produce pipe.

Both contestants copy the same pre-loaded source topic (N Avro lock commands over 4 partitions, with
keys, a header and producer timestamps) to a destination topic of their own on one embedded broker,
in the same run, and do the same job per record: keep key, value, headers and timestamp, add the four
``replay.*`` headers, partition by key with murmur2 (Kafka's default).

- ours: :func:`streams.tools.replay.run_replay` — the engine of ``soma replay --execute`` (no filters).
- pipe: confluent-kafka (librdkafka) ``Consumer.consume(10000)`` → ``Producer.produce`` per record →
  ``flush()``, the usual minimal Python mirror loop.

Each contestant runs in its own process. The rate is N / seconds from the first read to the broker's
acknowledgement of the last record (client start-up and metadata are excluded for both); the wall time
including start-up is printed too. Every destination is read back and compared with the source
(count, and key/value/timestamp/headers of every record, plus the replay headers) before a rate counts.

Run from the repository root (``make bench-replay`` installs confluent-kafka, the ``bench`` extra)::

    .venv/bin/python -m tests.perf.bench_replay [--events 200000] [--rounds 2]

Exit status: 0 when every run copied the data correctly (whether or not the 1.0× target was met),
1 on wrong results, 2 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 4
TARGET_RATIO = 1.0
SOURCE = "bench.replay.source"


class BenchError(Exception):
    """The benchmark could not complete."""


# -- data ---------------------------------------------------------------------------------------------


async def fill_source(bootstrap: str, events: int) -> None:
    """N lock commands (Avro), 500 tenants as keys, a header, timestamps one ms apart."""
    from schemas import LockCommand, encode_event

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(SOURCE, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    base = int(time.time() * 1000) - events
    try:
        pending = []
        for index in range(events):
            tenant = f"bench-t{index % 500:03d}"
            command = LockCommand(tenant=tenant, action="status", user="ann", roles=["admin"])
            pending.append(await producer.send(SOURCE, key=tenant.encode(), value=encode_event(command),
                                               timestamp_ms=base + index, headers=[("origin", b"bench")]))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 120.0) -> list[tuple[Any, ...]]:
    """(key, value, timestamp) of every record, read until ``expected`` arrived (then a little longer)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_poll_records=50_000, check_crcs=False)
    await consumer.start()
    await asyncio.sleep(0)
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=300, max_records=50_000)
            for records in fetched.values():
                for r in records:
                    headers = tuple(r.headers or ())
                    kept = tuple(h for h in headers if not h[0].startswith("replay."))
                    replay = tuple(sorted(h[0] for h in headers if h[0].startswith("replay.")))
                    seen.append((r.key, r.value, r.timestamp, kept, replay))
            if len(seen) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() > quiet_until:
                    break
        return seen
    finally:
        await asyncio.sleep(0.05)
        await consumer.stop()


# -- contestants (each in its own process) ------------------------------------------------------------


def run_ours(bootstrap: str, destination: str) -> dict[str, Any]:
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    from streams.settings import Settings
    from streams.tools.replay import ReplayPlan, run_replay
    from streams.tools.selection import RecordFilter

    started, cpu = time.monotonic(), time.process_time()
    plan = ReplayPlan(SOURCE, destination, RecordFilter(), execute=True, sample=0)
    result = asyncio.run(run_replay(Settings.from_env(), plan))
    return {"sent": result.sent, "seconds": result.seconds, "wall": time.monotonic() - started,
            "cpu": time.process_time() - cpu}


def run_pipe(bootstrap: str, destination: str, events: int) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
    from confluent_kafka import TopicPartition as CTopicPartition

    started, cpu = time.monotonic(), time.process_time()
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-pipe-{uuid.uuid4().hex[:6]}",
        "enable.auto.commit": False, "enable.partition.eof": False, "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024, "queued.max.messages.kbytes": 256 * 1024,
        "check.crcs": False,
    })
    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "batch.size": 1024 * 1024,
        "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1024 * 1024,
        "partitioner": "murmur2_random",  # Kafka's (and ours): same partition per key
    })
    consumer.assign([CTopicPartition(SOURCE, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    producer.list_topics(destination, timeout=10)
    replay_id, topic = str(uuid.uuid4()).encode(), SOURCE.encode()
    copied = 0
    first = None
    while copied < events:
        messages = consumer.consume(num_messages=10_000, timeout=1.0)
        if first is None and messages:
            first = time.monotonic()
        for message in messages:
            if message.error():
                raise BenchError(f"consume error: {message.error()}")
            headers = (message.headers() or []) + [
                ("replay.id", replay_id), ("replay.original.topic", topic),
                ("replay.original.partition", str(message.partition()).encode()),
                ("replay.original.offset", str(message.offset()).encode()),
            ]
            while True:
                try:
                    producer.produce(destination, message.value(), message.key(), headers=headers,
                                     timestamp=message.timestamp()[1])
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        copied += len(messages)
    if producer.flush(60) != 0:
        raise BenchError("the pipe's producer did not deliver everything within 60 s")
    end = time.monotonic()
    consumer.close()
    return {"sent": copied, "seconds": end - (first or end), "wall": end - started,
            "cpu": time.process_time() - cpu}


def contestant(name: str, bootstrap: str, destination: str, events: int) -> dict[str, Any]:
    """Run one contestant in a child process (``--child``) and return its JSON report."""
    command = [sys.executable, "-m", "tests.perf.bench_replay", "--child", name, "--bootstrap", bootstrap,
               "--destination", destination, "--events", str(events)]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SOMA_LOG_LEVEL": "warning",
           "SOMA_DATA_DIR": tempfile.mkdtemp(prefix="bench-replay-")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise BenchError(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the run ------------------------------------------------------------------------------------------


async def create_destination(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


REPLAY_HEADERS = ("replay.id", "replay.original.offset", "replay.original.partition", "replay.original.topic")


def check_copy(source: list[tuple[Any, ...]], copy: list[tuple[Any, ...]], name: str) -> None:
    """Same records (key, value, timestamp, original headers), each with the four replay headers."""
    if len(copy) != len(source):
        raise AssertionError(f"{name}: {len(copy)} records in the destination, {len(source)} in the source")
    if Counter(c[:4] for c in copy) != Counter(s[:4] for s in source):
        raise AssertionError(f"{name}: the destination's records (key, value, timestamp, headers) differ")
    if any(c[4] != REPLAY_HEADERS for c in copy):
        raise AssertionError(f"{name}: a copy lacks the replay.* headers")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["ours", "pipe"])
    parser.add_argument("--bootstrap")
    parser.add_argument("--destination")
    args = parser.parse_args()
    if args.child:
        report = (run_ours(args.bootstrap, args.destination) if args.child == "ours"
                  else run_pipe(args.bootstrap, args.destination, args.events))
        print(json.dumps(report))
        return 0

    from tests.support.stack import start_broker

    workdir = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    broker = start_broker(workdir)
    try:
        bootstrap = broker.bootstrap_servers
        print(f"embedded broker {bootstrap}; loading {args.events} records into {SOURCE} ({PARTITIONS} partitions)")
        asyncio.run(fill_source(bootstrap, args.events))
        source = asyncio.run(read_topic(bootstrap, SOURCE, args.events))
        if len(source) != args.events:
            raise BenchError(f"the source holds {len(source)} records, not {args.events}")
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "pipe": []}
        for round_index in range(args.rounds):
            order = ["ours", "pipe"] if round_index % 2 == 0 else ["pipe", "ours"]
            for name in order:
                destination = f"bench.replay.{name}.{round_index}"
                asyncio.run(create_destination(bootstrap, destination))
                report = contestant(name, bootstrap, destination, args.events)
                check_copy(source, asyncio.run(read_topic(bootstrap, destination, args.events)), name)
                report["rate"] = report["sent"] / report["seconds"]
                results[name].append(report)
                print(f"  round {round_index + 1} {name:<4}: {report['sent']} records in {report['seconds']:.2f} s "
                      f"= {report['rate']:,.0f} records/s (wall incl. start-up {report['wall']:.2f} s, "
                      f"CPU {report['cpu']:.2f} s)")
    except AssertionError as exc:
        print(f"WRONG RESULT: {exc}", file=sys.stderr)
        return 1
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        broker.stop()
    best = {name: max(r["rate"] for r in runs) for name, runs in results.items()}
    ratio = best["ours"] / best["pipe"]
    print(f"best of {args.rounds}: soma replay {best['ours']:,.0f} records/s, "
          f"librdkafka pipe {best['pipe']:,.0f} records/s, ratio {ratio:.2f}x "
          f"(target >= {TARGET_RATIO:.1f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
