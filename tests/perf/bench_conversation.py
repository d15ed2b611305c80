"""What the pipeline adds to time-to-first-token, at 1, 10 and 50 concurrent sessions.

One run, one machine, side by side:

- **through Kafka**: a client produces ConversationTurns to ``soma.conversation.turns`` and reads
  ``soma.conversation.events``; its TTFT is from just before the produce to the arrival of the
  turn's first ``chunk`` event. A real ``soma worker`` answers with the real llama.cpp server.
- **direct**: the same prompts at the same concurrency straight to the same llama.cpp server with
  the same client library; TTFT is from the call to the first content delta.

Two ways to read "added":

1. per turn: client TTFT minus the provider TTFT the agent itself observed for that very turn (the
   ``ttft_ms`` of its ``completed`` event). This is exactly the time spent outside the model call —
   produce, broker, fetch, decode, scheduling, the chunk's way back — and is immune to the model's
   own variance. The target applies to this.
2. distribution: client TTFT percentiles minus the direct run's percentiles (noisier: llama.cpp
   answers one request at a time, so at 10 and 50 sessions most of either TTFT is queueing).

Load (``--load``): ``closed`` (default) — each session sends its next turn once its last one is
answered, as people in conversations do, and the sessions open at random moments within the first
``--ramp-ms`` (1 s), not all in the same millisecond; ``burst`` — every round all sessions send at
the same instant (the worst case: every turn's model request is prepared at once on the worker's one
event loop, so the last one waits for all the others' request building, ~1.3 ms each).

Run from the repository root::

    .venv/bin/python -m tests.perf.bench_conversation [--rounds 3] [--levels 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.llm import ChatClient, ChatDelta
from connectors.model_server import SMOLLM2_MODEL_ALIAS, EmbeddedModelServer, local_tokenizer_for_model
from schemas import ConversationTurn, TurnEvent, decode_event, encode_event
from streams.catalog import CONVERSATION_EVENTS, CONVERSATION_TURNS
from tests.support.stack import WorkerProcess, find_or_start_redis, start_broker

TARGET_P50_MS = 15.0
TARGET_P99_MS = 40.0
PROMPTS = [
    "Name a colour.", "Say hello.", "What is two plus two?", "Name a fruit.", "Name an animal.",
    "What day comes after Monday?", "Name a planet.", "Say yes or no.",
]
MAX_TOKENS = 8


@dataclass
class Level:
    sessions: int
    client_ttft: list[float] = field(default_factory=list)
    agent_provider_ttft: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    pickup: list[float] = field(default_factory=list)
    return_leg: list[float] = field(default_factory=list)
    direct_ttft: list[float] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class EventWatcher:
    """Reads every partition of the events topic and timestamps each turn's first chunk on arrival."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.first_chunk: dict[str, float] = {}
        #: Wall-clock legs of each turn, from the CreateTime the worker's producer stamped on its events.
        self.started_at: dict[str, int] = {}
        self.return_leg: dict[str, float] = {}
        self.completed: dict[str, TurnEvent] = {}
        self.failed: dict[str, TurnEvent] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False, fetch_max_wait_ms=5)
        await self._consumer.start()
        await self._consumer.topics()
        partitions = self._consumer.partitions_for_topic(CONVERSATION_EVENTS.name) or set()
        tps = [TopicPartition(CONVERSATION_EVENTS.name, p) for p in partitions]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            fetched = await self._consumer.getmany(timeout_ms=50)
            arrived = time.perf_counter()
            arrived_wall = time.time() * 1000
            for messages in fetched.values():
                for message in messages:
                    event = decode_event(message.value or b"", TurnEvent)
                    if event.type == "started":
                        self.started_at[event.turn_id] = message.timestamp
                    elif event.type == "chunk" and event.turn_id not in self.first_chunk:
                        self.first_chunk[event.turn_id] = arrived
                        self.return_leg[event.turn_id] = arrived_wall - message.timestamp
                    elif event.type == "completed":
                        self.completed[event.turn_id] = event
                        self._finish(event.turn_id)
                    elif event.type == "failed":
                        self.failed[event.turn_id] = event
                        self._finish(event.turn_id)

    def expect(self, turn_id: str) -> asyncio.Event:
        """An event set when the turn's ``completed`` or ``failed`` arrives."""
        return self._answered.setdefault(turn_id, asyncio.Event())

    def _finish(self, turn_id: str) -> None:
        self._answered.setdefault(turn_id, asyncio.Event()).set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()


async def through_kafka(bootstrap: str, level: Level, rounds: int, watcher: EventWatcher, load: Load) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()

    async def one(index: int, round_: int) -> None:
        # A fresh session for every turn: no history, so the model sees exactly the direct run's prompts.
        session = f"bench-{uuid.uuid4().hex[:8]}"
        turn = ConversationTurn(tenant="bench", session_id=session, user="bench",
                                prompt=PROMPTS[(index + round_) % len(PROMPTS)], max_tokens=MAX_TOKENS,
                                temperature=0)
        value = encode_event(turn)
        answered = watcher.expect(turn.event_id)
        sent, sent_wall = time.perf_counter(), time.time() * 1000
        await producer.send(CONVERSATION_TURNS.name, value, key=session.encode())
        await asyncio.wait_for(answered.wait(), timeout=300)
        turn_id = turn.event_id
        if turn_id in watcher.failed:
            raise RuntimeError(f"turn failed: {watcher.failed[turn_id].error}")
        client = (watcher.first_chunk[turn_id] - sent) * 1000
        provider = watcher.completed[turn_id].ttft_ms or 0.0
        level.client_ttft.append(client)
        level.agent_provider_ttft.append(provider)
        level.added.append(client - provider)
        level.pickup.append(watcher.started_at[turn_id] - sent_wall)
        level.return_leg.append(watcher.return_leg[turn_id])

    try:
        await _drive(one, level.sessions, rounds, load)
    finally:
        await producer.stop()


async def direct(base_url: str, level: Level, rounds: int, load: Load) -> None:
    # Configured as the worker configures its client (counting with the model's own tokenizer), so
    # both runs put the same requests in the model server's queue.
    tokenizer = local_tokenizer_for_model(SMOLLM2_MODEL_ALIAS)
    client = ChatClient(base_url, "no-key", SMOLLM2_MODEL_ALIAS, local_tokenizer=tokenizer,
                        server_tokenizer=False if tokenizer is not None else None)

    async def one(index: int, round_: int) -> None:
        started = time.perf_counter()
        prompt = PROMPTS[(index + round_) % len(PROMPTS)]
        first: float | None = None
        async for item in client.stream_chat([{"role": "user", "content": prompt}],
                                             max_tokens=MAX_TOKENS, temperature=0):
            if isinstance(item, ChatDelta) and first is None:
                first = (time.perf_counter() - started) * 1000
        level.direct_ttft.append(first if first is not None else float("nan"))

    try:
        await _drive(one, level.sessions, rounds, load)
    finally:
        await client.close()


@dataclass(frozen=True)
class Load:
    """How sessions send their turns: ``closed`` (opening within ``ramp_s``) or ``burst``."""

    shape: str
    ramp_s: float = 0.0
    seed: int = 7


async def _drive(one: Callable[[int, int], Awaitable[None]], sessions: int, rounds: int, load: Load) -> None:
    """``closed``: every session opens at a random moment within the ramp and sends its next turn when
    its last one is answered (conversations); ``burst``: every round, all sessions send at the same
    instant and wait for all answers."""
    if load.shape == "closed":
        opening = random.Random(load.seed)  # the same moments for the Kafka and the direct run
        delays = [opening.uniform(0, load.ramp_s) for _ in range(sessions)] if sessions > 1 else [0.0]

        async def session(index: int) -> None:
            await asyncio.sleep(delays[index])
            for round_ in range(rounds):
                await one(index, round_)

        await asyncio.gather(*(session(i) for i in range(sessions)))
    else:
        for round_ in range(rounds):
            await asyncio.gather(*(one(i, round_) for i in range(sessions)))


def report(levels: list[Level]) -> bool:
    print()
    header = (f"{'sessions':>8}{'turns':>7} | {'added p50':>10}{'added p99':>10} | {'client p50':>11}"
              f"{'client p99':>11} | {'direct p50':>11}{'direct p99':>11} | {'dist. p50 diff':>15}")
    print(header)
    print("-" * len(header))
    ok = True
    for level in levels:
        added50, added99 = pct(level.added, 50), pct(level.added, 99)
        ok = ok and added50 <= TARGET_P50_MS and added99 <= TARGET_P99_MS
        print(f"{level.sessions:>8}{len(level.added):>7} | {added50:>10.1f}{added99:>10.1f} | "
              f"{pct(level.client_ttft, 50):>11.1f}{pct(level.client_ttft, 99):>11.1f} | "
              f"{pct(level.direct_ttft, 50):>11.1f}{pct(level.direct_ttft, 99):>11.1f} | "
              f"{pct(level.client_ttft, 50) - pct(level.direct_ttft, 50):>15.1f}")
    print()
    print("all times in ms. added = client TTFT through Kafka - provider TTFT the agent observed for the same turn;")
    print("client = produce -> first chunk event received; direct = same prompts, same concurrency, straight to")
    print("the model server; dist. p50 diff = client p50 - direct p50 (includes llama.cpp's queueing variance).")
    print("where the added time goes (p50 / p99, from the CreateTime stamps of the worker's events):")
    for level in levels:
        if level.added:
            print(f"  {level.sessions:>2} sessions: added mean {statistics.fmean(level.added):.1f} ms, "
                  f"min {min(level.added):.1f} ms; pickup (produce -> 'started' stamped) "
                  f"{pct(level.pickup, 50):.1f} / {pct(level.pickup, 99):.1f}; return (first chunk stamped -> "
                  f"received) {pct(level.return_leg, 50):.1f} / {pct(level.return_leg, 99):.1f}")
    verdict = "met" if ok else "NOT met"
    print(f"target added p50 <= {TARGET_P50_MS:.0f} ms and p99 <= {TARGET_P99_MS:.0f} ms at every level: {verdict}")
    return ok


async def run(args: argparse.Namespace, workdir: Path) -> list[Level]:
    with ExitStack() as stack:
        broker = start_broker(workdir)
        stack.callback(broker.stop)
        redis_url, redis_process = find_or_start_redis(workdir)
        if redis_process is not None:
            stack.callback(redis_process.terminate)
        server = EmbeddedModelServer(log_path=workdir / "model-server.log").start()
        stack.callback(server.stop)
        worker = WorkerProcess(broker.bootstrap_servers, redis_url, workdir,
                               extra_env={"OPENAI_BASE_URL": server.base_url, **args.worker_env})
        worker.start()
        stack.callback(worker.stop)
        worker.wait_ready("conversation", timeout=120)
        watcher = EventWatcher(broker.bootstrap_servers)
        await watcher.start()
        try:
            print("warming up ...", flush=True)
            await through_kafka(broker.bootstrap_servers, Level(4), 2, watcher, Load("burst"))
            await direct(server.base_url, Level(4), 1, Load("burst"))
            levels = []
            for sessions in args.levels:
                level = Level(sessions)
                rounds = max(args.rounds, -(-args.min_turns // sessions))
                print(f"{sessions} concurrent sessions x {rounds} rounds: through Kafka ...", flush=True)
                await through_kafka(broker.bootstrap_servers, level, rounds, watcher, args.load)
                print(f"{sessions} concurrent sessions x {rounds} rounds: direct ...", flush=True)
                await direct(server.base_url, level, rounds, args.load)
                levels.append(level)
            return levels
        finally:
            await watcher.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_conversation", description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,10,50", help="concurrent sessions to measure (default 1,10,50)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of turns per level (default 2)")
    parser.add_argument("--min-turns", type=int, default=30, help="at least this many turns per level (default 30)")
    parser.add_argument("--load", choices=["closed", "burst"], default="closed",
                        help="closed (default): each session sends its next turn when its last one is answered, "
                        "like people in conversation; burst: all sessions send at the same instant every round "
                        "(the worst case: every turn's request is prepared at once)")
    parser.add_argument("--ramp-ms", type=int, default=1000,
                        help="closed load: sessions open at random moments within this many ms (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the worker, e.g. SOMA_BATCH_WAIT_MS=5 (repeatable)")
    args = parser.parse_args(argv)
    args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    args.levels = [int(value) for value in args.levels.split(",")]
    args.load = Load(args.load, args.ramp_ms / 1000)
    workdir = Path(tempfile.mkdtemp(prefix="bench-conversation-"))
    try:
        levels = asyncio.run(run(args, workdir))
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}\nlogs kept in {workdir}", file=sys.stderr)
        return 2
    shape = args.load.shape
    print(f"\nload: {shape}" + (f" (sessions open within {args.ramp_ms} ms)" if shape == "closed" else ""))
    report(levels)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
