"""Fuzz battery (issue 12): malformed and adversarial records on every input topic, from a raw Kafka client.

One worker (all four agents, the real model server, local embeddings, Redis) serves the module. Each
input topic gets 80+ kinds of bad records (``tests/support/fuzz_cases.py``): dates and numbers out of
range, deep nesting, oversized and badly encoded text, broken Confluent frames, values that are not a
JSON object, wrong types, unknown fields and odd keys. The contract checked:

- every bad record is accounted for: a ``<topic>.dlq`` entry whose headers name its topic, partition
  and offset with a non-empty error class and message, or a refusal (``rejected`` LockState, ``failed``
  TurnEvent, ``failed`` EmbeddingResult) naming its event id; none is dead-lettered twice;
- a bad record has no effect (no lock is granted to a tenant named only by bad commands; a usage
  rollup counts none of them);
- a valid record whose key is null or disagrees with the field the topic is keyed by is re-produced to
  the same topic with the right key (header ``soma.rerouted.from``) and processed once there;
- afterwards one valid record per agent is answered, and no agent restarted
  (``soma_agent_restarts_total`` on the worker's ``/metrics``).

The tests run in file order: the re-routing tests first (so that a battery that breaks an agent does
not hide them), then one battery per topic, then the final check of all agents.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from connectors.broker import free_port
from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    LockCommand,
    LockState,
    SchemaError,
    TurnEvent,
    UsageEvent,
    UsageReport,
    decode_event,
    encode_event,
)
from streams.catalog import (
    CONVERSATION_EVENTS,
    CONVERSATION_TURNS,
    EMBEDDING_JOBS,
    EMBEDDING_RESULTS,
    LOCK_COMMANDS,
    LOCK_STATE,
    USAGE_EVENTS,
    USAGE_REPORTS,
    TopicSpec,
)
from streams.dlq import DeadLetter, parse_dlq_headers
from tests.integration.conftest import ADMIN, OTHER_ADMIN, Stack
from tests.support import fuzz_cases as fuzz
from tests.support.stack import Consumed, TopicReader, WorkerProcess, start_broker

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 65_536
MAX_DOCUMENT_CHARS = 6000
PARTITIONS = 4
REROUTED_HEADER = "soma.rerouted.from"
#: Every usage event of the battery lies in the 10:00 window of this day; 12:30 closes it.
USAGE_HOUR = "2025-06-01T10:{:02d}:00Z"
USAGE_CLOSER = "2025-06-01T12:30:00Z"
RUN = uuid.uuid4().hex[:6]
TURN_TENANT = f"fz{RUN}-turns"
EMBED_TENANT = f"fz{RUN}-embed"
USAGE_TENANT = f"fz{RUN}-usage"

AGENTS = {LOCK_COMMANDS.name: "locks", CONVERSATION_TURNS.name: "conversation",
          EMBEDDING_JOBS.name: "embeddings", USAGE_EVENTS.name: "usage"}
INPUTS = [LOCK_COMMANDS, CONVERSATION_TURNS, EMBEDDING_JOBS, USAGE_EVENTS]


# -- the stack -------------------------------------------------------------------------------------------


@dataclass
class FuzzStack:
    stack: Stack
    worker: WorkerProcess
    web: str


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, model_server: Any) -> Iterator[FuzzStack]:
    workdir = tmp_path_factory.mktemp("fuzz")
    stack = Stack(start_broker(workdir), redis_url, workdir)
    port = free_port()
    try:
        worker = stack.worker(
            OPENAI_BASE_URL=model_server.base_url,
            SOMA_LLM_PROVIDER="llama.cpp",
            SOMA_WEB_PORT=str(port),
            SOMA_PARTITIONS=str(PARTITIONS),
            SOMA_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
            SOMA_TURN_MAX_PROMPT_CHARS="2000",
            SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS=str(MAX_DOCUMENT_CHARS),
            SOMA_USAGE_IDLE_CLOSE_SECONDS="0",
            SOMA_USAGE_TICK_SECONDS="1",
        )
        for agent in AGENTS.values():
            worker.wait_ready(agent)
        yield FuzzStack(stack, worker, f"http://127.0.0.1:{port}")
    finally:
        stack.close()


class Observer:
    """Reads every answer topic, DLQ and input topic of the stack from the beginning."""

    def __init__(self, bootstrap: str) -> None:
        topics = [LOCK_STATE.name, CONVERSATION_EVENTS.name, EMBEDDING_RESULTS.name, USAGE_REPORTS.name]
        topics += [spec.dlq for spec in INPUTS] + [spec.name for spec in INPUTS]
        self.reader = TopicReader(bootstrap, *topics)
        self._decoded: dict[tuple[str, int, int], Envelope | None] = {}

    async def poll(self) -> None:
        await self.reader.poll(timeout_ms=300)

    def on(self, topic: str) -> list[Consumed]:
        return [record for record in self.reader.seen if record.topic == topic]

    def events(self, topic: str, model: type[Any]) -> list[tuple[Consumed, Any]]:
        out = []
        for record in self.on(topic):
            at = (record.topic, record.partition, record.offset)
            if at not in self._decoded:
                try:
                    self._decoded[at] = decode_event(record.value or b"", model)
                except SchemaError:
                    self._decoded[at] = None
            event = self._decoded[at]
            if event is not None:
                out.append((record, event))
        return out

    def letters(self, spec: TopicSpec) -> dict[tuple[int, int], list[DeadLetter]]:
        """DLQ entries of an input topic by the (partition, offset) of the record they name."""
        found: dict[tuple[int, int], list[DeadLetter]] = {}
        for record in self.on(spec.dlq):
            letter = parse_dlq_headers(record.headers)
            if letter.topic == spec.name:
                found.setdefault((letter.partition, letter.offset), []).append(letter)
        return found

    def answers(self, spec: TopicSpec) -> dict[str, list[tuple[Consumed, str, bool]]]:
        """Answers by the event id they name: (record, status, is a refusal)."""
        found: dict[str, list[tuple[Consumed, str, bool]]] = {}
        if spec is LOCK_COMMANDS:
            for record, state in self.events(LOCK_STATE.name, LockState):
                for ref in {state.command_event_id, state.causation_id} - {None}:
                    found.setdefault(ref, []).append((record, state.status, state.status == "rejected"))
        elif spec is CONVERSATION_TURNS:
            for record, event in self.events(CONVERSATION_EVENTS.name, TurnEvent):
                if event.type in ("completed", "failed"):
                    found.setdefault(event.turn_id, []).append((record, event.type, event.type == "failed"))
        elif spec is EMBEDDING_JOBS:
            for record, result in self.events(EMBEDDING_RESULTS.name, EmbeddingResult):
                found.setdefault(result.job_id, []).append((record, result.status, result.status == "failed"))
        return found

    def rerouted(self, spec: TopicSpec, model: type[Any]) -> dict[str, list[Consumed]]:
        """Records on an input topic carrying the re-route header, by the event id they hold."""
        found: dict[str, list[Consumed]] = {}
        for record, event in self.events(spec.name, model):
            if any(name == REROUTED_HEADER for name, _ in record.headers):
                found.setdefault(event.event_id, []).append(record)
        return found


@pytest.fixture(scope="module")
async def observer(fuzz_stack: FuzzStack) -> AsyncIterator[Observer]:
    observer = Observer(fuzz_stack.stack.bootstrap)
    await observer.reader.start()
    yield observer
    await observer.reader.stop()


async def send(bootstrap: str, topic: str, cases: list[fuzz.Case]) -> None:
    """Send with a plain producer (no schema, no validation); note where each case landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1024 * 1024,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=case.value, key=case.key, partition=case.partition,
                                headers=[("fuzz.case", case.name.encode())])
            for case in cases
        ]
        for case, metadata in zip(cases, await asyncio.gather(*futures), strict=True):
            case.sent_partition, case.offset = metadata.partition, metadata.offset
    finally:
        await producer.stop()


def lock(tenant: str, action: str, **fields: Any) -> LockCommand:
    return LockCommand.model_validate({"tenant": tenant, "action": action, **fields})


def upsert(tenant: str, collection: str, doc_id: str, text: str) -> EmbeddingJob:
    return EmbeddingJob.model_validate({"tenant": tenant, "job": "upsert", "collection": collection,
                                        "documents": [{"id": doc_id, "text": text}]})


def usage_event(tenant: str, at: str, input_tokens: int, output_tokens: int) -> UsageEvent:
    return UsageEvent.model_validate({"tenant": tenant, "occurred_at": at, "provider": "openai", "model": "gpt-4o",
                                      "kind": "chat", "input_tokens": input_tokens, "output_tokens": output_tokens})


def valid_case(name: str, event: Envelope, key: bytes | None, partition: int | None = None) -> fuzz.Case:
    return fuzz.Case(name, key, encode_event(event), event.event_id, partition=partition)


# -- observing the worker --------------------------------------------------------------------------------


def restarts(fuzz_stack: FuzzStack) -> dict[str, float]:
    """``soma_agent_restarts_total`` per agent, from the worker's /metrics."""
    with urllib.request.urlopen(fuzz_stack.web + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "soma_agent_restarts_total":
                found[sample.labels["agent"]] = sample.value
    return found


def crash_reasons(worker: WorkerProcess, agent: str) -> list[str]:
    """The exception lines of the tracebacks the worker logged after ``agent <name> crashed``."""
    assert worker.log_path is not None
    lines = worker.log_path.read_text(errors="replace").splitlines()
    reasons: set[str] = set()
    for i, line in enumerate(lines):
        if f"agent {agent} crashed" not in line:
            continue
        last = None
        for follow in lines[i + 1:i + 500]:
            if re.match(r"^\[\d{4}-", follow):
                break  # the next log record
            if follow and not follow[0].isspace() and not follow.startswith(
                    ("Traceback", "The above exception", "During handling")):
                last = follow.strip()
        if last:
            reasons.add(last[:200])
    return sorted(reasons)


def restart_problems(fuzz_stack: FuzzStack, *agents: str) -> list[str]:
    counts = restarts(fuzz_stack)
    problems = []
    for agent in agents:
        if agent not in counts:
            problems.append(f"agent {agent}: no soma_agent_restarts_total series on /metrics")
        elif counts[agent] > 0:
            reasons = "; ".join(crash_reasons(fuzz_stack.worker, agent)) or "(no traceback in the log)"
            problems.append(f"agent {agent} restarted {counts[agent]:.0f} times: {reasons}")
    return problems


def in_process(case: fuzz.Case, model: type[Envelope]) -> str:
    """What decode_event says about the case's bytes in this process (a hint for the failure report)."""
    value = case.value or b""
    if len(value) > MAX_EVENT_BYTES:
        return "too large"
    try:
        decode_event(value, model)
    except SchemaError as exc:
        return f"{type(exc).__name__}"
    except BaseException as exc:
        return f"raises {type(exc).__name__}: {str(exc)[:80]} (not a SchemaError)"
    return "passes validation"


# -- accounting ------------------------------------------------------------------------------------------


def verdict(case: fuzz.Case, letters: dict[tuple[int, int], list[DeadLetter]],
            answers: dict[str, list[tuple[Consumed, str, bool]]]) -> str | None:
    """None when the case is accounted for, else what is wrong."""
    mine = letters.get((case.sent_partition, case.offset), [])
    answered = answers.get(case.event_id, []) if case.event_id else []
    accepted = sorted({status for _, status, refusal in answered if not refusal})
    if len(mine) > 1:
        return f"dead-lettered {len(mine)} times (replayed)"
    if mine and not (mine[0].error_class and mine[0].error_message):
        return f"DLQ entry without error class/message: {mine[0]}"
    if accepted and case.must_refuse:
        return f"processed as valid (answered {', '.join(accepted)})" + (" and dead-lettered" if mine else "")
    refusals = [status for _, status, refusal in answered if refusal]
    if len(refusals) > 1:
        return f"refused {len(refusals)} times (replayed)"
    if mine or refusals or accepted:
        return None
    return "no DLQ entry and no answer"


async def account(fuzz_stack: FuzzStack, observer: Observer, spec: TopicSpec, cases: list[fuzz.Case],
                  timeout: float = 90.0, patience: float = 30.0) -> dict[str, str]:
    """Wait until every case is accounted for (or nothing changed for ``patience`` s); the problems left.

    An agent that is restarting gets a third of the patience: it is crash-looping on a record.
    """
    deadline = time.monotonic() + timeout
    last_change, last_open = time.monotonic(), -1
    while True:
        await observer.poll()
        letters, answers = observer.letters(spec), observer.answers(spec)
        problems = {case.name: problem for case in cases if (problem := verdict(case, letters, answers))}
        if not problems:
            # A little longer: a replay after a late crash would dead-letter or answer a second time.
            await asyncio.sleep(2)
            await observer.poll()
            letters, answers = observer.letters(spec), observer.answers(spec)
            return {case.name: problem for case in cases if (problem := verdict(case, letters, answers))}
        if len(problems) != last_open:
            last_open, last_change = len(problems), time.monotonic()
        now = time.monotonic()
        waited = now - last_change
        if now > deadline or waited > patience or (
                waited > patience / 3 and restarts(fuzz_stack).get(AGENTS[spec.name], 0) > 0):
            return problems


def report(spec: TopicSpec, model: type[Envelope], cases: list[fuzz.Case], problems: dict[str, str],
           extra: list[str]) -> str:
    by_name = {case.name: case for case in cases}
    lines = [f"{spec.name}: {len(problems)} of {len(cases)} bad records not accounted for"]
    for name, problem in problems.items():
        case = by_name[name]
        lines.append(f"  - {name} [p{case.sent_partition}@{case.offset}]: {problem} "
                     f"(in-process decode_event: {in_process(case, model)})")
    lines += [f"  * {line}" for line in extra]
    return "\n".join(lines)


# -- re-routing of wrongly keyed records -------------------------------------------------------------------


def other_keys(right: bytes, count: int, prefix: bytes = b"wrong-") -> list[bytes]:
    """Keys that the default partitioner puts on partitions other than ``right``'s (each on its own one)."""
    taken = {fuzz.partition_for(right, PARTITIONS)}
    keys = []
    for i in range(1000):
        candidate = prefix + str(i).encode()
        partition = fuzz.partition_for(candidate, PARTITIONS)
        if partition not in taken:
            taken.add(partition)
            keys.append(candidate)
            if len(keys) == count:
                return keys
    raise AssertionError("no such keys")


def free_partition(*keys: bytes) -> int:
    """A partition none of ``keys`` is hashed to (where a null-keyed record is put on purpose)."""
    used = {fuzz.partition_for(key, PARTITIONS) for key in keys}
    return min(set(range(PARTITIONS)) - used)


def non_utf8_key(right: bytes, *avoid: bytes) -> bytes:
    taken = {fuzz.partition_for(key, PARTITIONS) for key in (right, *avoid)}
    for i in range(256):
        candidate = b"\xff\xfe" + bytes([i])
        if fuzz.partition_for(candidate, PARTITIONS) not in taken:
            return candidate
    return b"\xff\xfe"


async def wait_until(observer: Observer, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await observer.poll()
    await asyncio.sleep(1)  # a second answer or copy would come right after the first
    await observer.poll()


def reroute_problems(observer: Observer, spec: TopicSpec, model: type[Envelope], cases: list[fuzz.Case],
                     right_key: bytes) -> list[str]:
    """Each wrongly keyed record: one copy with the right key on the right partition, no DLQ entry."""
    problems = []
    copies = observer.rerouted(spec, model)
    letters = observer.letters(spec)
    right_partition = fuzz.partition_for(right_key, PARTITIONS)
    for case in cases:
        mine = copies.get(case.event_id or "", [])
        if len(mine) != 1:
            problems.append(f"{case.name}: {len(mine)} re-routed copies on {spec.name} (header {REROUTED_HEADER})")
        for copy in mine:
            if copy.key != right_key or copy.partition != right_partition:
                problems.append(f"{case.name}: re-routed copy keyed {copy.key!r} on partition {copy.partition}, "
                                f"expected {right_key!r} on {right_partition}")
        if (case.sent_partition, case.offset) in letters:
            letter = letters[(case.sent_partition, case.offset)][0]
            problems.append(f"{case.name}: dead-lettered ({letter.error_class}: {letter.error_message[:100]})")
    return problems


async def test_wrongly_keyed_lock_commands_are_rerouted_and_grant_at_most_one_lock(
    fuzz_stack: FuzzStack, observer: Observer
) -> None:
    tenant = f"fz{RUN}-rekey-lock"
    right = tenant.encode()
    (wrong,) = other_keys(right, 1)
    odd = non_utf8_key(right, wrong)
    cases = [
        valid_case("enable, null key", lock(tenant, "enable", reason="null", **ADMIN), None,
                   partition=free_partition(right, wrong)),
        valid_case("enable, wrong key", lock(tenant, "enable", reason="wrong", **OTHER_ADMIN),
                   wrong),
        valid_case("status, non-UTF-8 key", lock(tenant, "status", user="viewer"), odd),
    ]
    await send(fuzz_stack.stack.bootstrap, LOCK_COMMANDS.name, cases)
    ids = {case.event_id for case in cases}
    await wait_until(observer, lambda: ids <= set(observer.answers(LOCK_COMMANDS)), timeout=30)

    problems = reroute_problems(observer, LOCK_COMMANDS, LockCommand, cases, right)
    answers = observer.answers(LOCK_COMMANDS)
    for case in cases:
        mine = answers.get(case.event_id or "", [])
        if len(mine) != 1:
            problems.append(f"{case.name}: answered {len(mine)} times")
        for record, status, _ in mine:
            expected = right + (b"#rejected" if status == "rejected" else b"")
            if record.key != expected:
                problems.append(f"{case.name}: answer {status} keyed {record.key!r}, expected {expected!r}")
    enables = sorted(status for case in cases[:2] for _, status, _ in answers.get(case.event_id or "", []))
    if enables != ["active", "rejected"]:
        problems.append(f"two enables for one tenant under different keys were answered {enables}, "
                        "expected one active and one rejected")
    grants = [state for _, state in observer.events(LOCK_STATE.name, LockState)
              if state.tenant == tenant and state.status == "active" and state.action == "enable"]
    tokens = sorted(state.fencing_token for state in grants)
    if tokens != [1]:
        problems.append(f"fencing tokens granted for {tenant}: {tokens}, expected [1] and nothing else")
    assert not problems, "wrongly keyed lock commands:\n  " + "\n  ".join(problems)


async def test_wrongly_keyed_turns_are_rerouted_and_answered_once(fuzz_stack: FuzzStack, observer: Observer) -> None:
    session = f"fz{RUN}-rekey-session"
    right = session.encode()
    (wrong,) = other_keys(right, 1)

    def turn() -> ConversationTurn:
        return ConversationTurn(tenant=TURN_TENANT, session_id=session, user="ann", prompt="Say hi.", max_tokens=8)

    cases = [valid_case("turn, null key", turn(), None, partition=free_partition(right, wrong)),
             valid_case("turn, wrong key", turn(), wrong),
             valid_case("turn, non-UTF-8 key", turn(), non_utf8_key(right, wrong))]
    await send(fuzz_stack.stack.bootstrap, CONVERSATION_TURNS.name, cases)
    ids = {case.event_id for case in cases}
    await wait_until(observer, lambda: ids <= set(observer.answers(CONVERSATION_TURNS)), timeout=60)

    problems = reroute_problems(observer, CONVERSATION_TURNS, ConversationTurn, cases, right)
    answers = observer.answers(CONVERSATION_TURNS)
    for case in cases:
        mine = answers.get(case.event_id or "", [])
        if len(mine) != 1:
            problems.append(f"{case.name}: {len(mine)} completed/failed events")
        for record, status, _ in mine:
            if record.key != right:
                problems.append(f"{case.name}: {status} event keyed {record.key!r}, expected {right!r}")
    assert not problems, "wrongly keyed turns:\n  " + "\n  ".join(problems)


async def test_wrongly_keyed_embedding_jobs_are_rerouted_and_answered_once(
    fuzz_stack: FuzzStack, observer: Observer
) -> None:
    tenant = f"fz{RUN}-rekey-embed"
    right = tenant.encode()
    (wrong,) = other_keys(right, 1)

    def job(doc: str) -> EmbeddingJob:
        return upsert(tenant, "rekey", doc, f"a note called {doc}")

    cases = [valid_case("upsert, null key", job("a"), None, partition=free_partition(right, wrong)),
             valid_case("upsert, wrong key", job("b"), wrong),
             valid_case("upsert, non-UTF-8 key", job("c"), non_utf8_key(right, wrong))]
    await send(fuzz_stack.stack.bootstrap, EMBEDDING_JOBS.name, cases)
    ids = {case.event_id for case in cases}
    # The first job of the worker loads the local model.
    await wait_until(observer, lambda: ids <= set(observer.answers(EMBEDDING_JOBS)), timeout=120)

    problems = reroute_problems(observer, EMBEDDING_JOBS, EmbeddingJob, cases, right)
    answers = observer.answers(EMBEDDING_JOBS)
    for case in cases:
        mine = answers.get(case.event_id or "", [])
        if len(mine) != 1:
            problems.append(f"{case.name}: {len(mine)} results")
        for record, status, _ in mine:
            if record.key != right:
                problems.append(f"{case.name}: result {status} keyed {record.key!r}, expected {right!r}")
    assert not problems, "wrongly keyed embedding jobs:\n  " + "\n  ".join(problems)


async def test_wrongly_keyed_usage_events_are_rerouted_and_counted_once(
    fuzz_stack: FuzzStack, observer: Observer
) -> None:
    tenant = f"fz{RUN}-rekey-usage"
    right = tenant.encode()
    (wrong,) = other_keys(right, 1)
    odd = non_utf8_key(right, wrong)

    def usage(minute: int, tokens: int) -> UsageEvent:
        return usage_event(tenant, USAGE_HOUR.format(minute), tokens, 1)

    cases = [valid_case("usage, null key", usage(10, 7), None, partition=free_partition(right, wrong)),
             valid_case("usage, wrong key", usage(20, 11), wrong),
             valid_case("usage, non-UTF-8 key", usage(25, 13), odd)]
    await send(fuzz_stack.stack.bootstrap, USAGE_EVENTS.name, cases)
    ids = {case.event_id for case in cases}
    await wait_until(observer, lambda: ids <= set(observer.rerouted(USAGE_EVENTS, UsageEvent)), timeout=20)
    problems = reroute_problems(observer, USAGE_EVENTS, UsageEvent, cases, right)

    # Only once the copies are in the right partition does an event-time step close their window.
    closer = usage_event(tenant, USAGE_CLOSER, 1, 0)
    await send(fuzz_stack.stack.bootstrap, USAGE_EVENTS.name, [valid_case("closer", closer, right)])

    def hour_totals() -> list[UsageReport]:
        return [report for _, report in observer.events(USAGE_REPORTS.name, UsageReport)
                if report.tenant == tenant and report.report == "rollup" and report.window == "hour"
                and report.provider is None and report.window_start is not None and report.window_start.hour == 10]

    await wait_until(observer, lambda: bool(hour_totals()), timeout=30)
    totals = [(r.events, r.input_tokens) for r in hour_totals()]
    if totals != [(3, 7 + 11 + 13)]:
        problems.append(f"hour rollup of {tenant} (events, input tokens): {totals}, expected [(3, 31)]: "
                        "each wrongly keyed event counted once, in the tenant's partition")
    assert not problems, "wrongly keyed usage events:\n  " + "\n  ".join(problems)


# -- the batteries -----------------------------------------------------------------------------------------


def lock_battery() -> tuple[fuzz.Profile, list[fuzz.Case]]:
    profile = fuzz.lock_profile(LOCK_COMMANDS, f"fz{RUN}-lock")
    return profile, fuzz.build_cases(profile, MAX_EVENT_BYTES) + fuzz.lock_avro_cases(profile)


def turn_battery() -> tuple[fuzz.Profile, list[fuzz.Case]]:
    profile = fuzz.turn_profile(CONVERSATION_TURNS, TURN_TENANT, f"fz{RUN}-s")
    return profile, fuzz.build_cases(profile, MAX_EVENT_BYTES) + fuzz.turn_avro_cases(profile)


def embedding_battery() -> tuple[fuzz.Profile, list[fuzz.Case]]:
    profile = fuzz.embedding_profile(EMBEDDING_JOBS, EMBED_TENANT, MAX_DOCUMENT_CHARS)
    return profile, fuzz.build_cases(profile, MAX_EVENT_BYTES) + fuzz.embedding_avro_cases(profile)


def usage_battery() -> tuple[fuzz.Profile, list[fuzz.Case]]:
    profile = fuzz.usage_profile(USAGE_EVENTS, USAGE_TENANT, USAGE_HOUR.format(5))
    return profile, fuzz.build_cases(profile, MAX_EVENT_BYTES) + fuzz.usage_avro_cases(profile)


BATTERIES: dict[str, Callable[[], tuple[fuzz.Profile, list[fuzz.Case]]]] = {
    LOCK_COMMANDS.name: lock_battery,
    CONVERSATION_TURNS.name: turn_battery,
    EMBEDDING_JOBS.name: embedding_battery,
    USAGE_EVENTS.name: usage_battery,
}


@pytest.mark.parametrize("topic", list(BATTERIES))
async def test_every_bad_record_is_accounted_for_and_no_agent_restarts(
    fuzz_stack: FuzzStack, observer: Observer, topic: str
) -> None:
    profile, cases = BATTERIES[topic]()
    cases = fuzz.unique_ids(cases)
    assert len(cases) >= 25 and len({case.name for case in cases}) == len(cases)
    spec = profile.spec
    await send(fuzz_stack.stack.bootstrap, spec.name, cases)

    problems = await account(fuzz_stack, observer, spec, cases)
    extra = []
    if spec is LOCK_COMMANDS:
        extra += await lock_effects(fuzz_stack, observer, cases)
    extra += restart_problems(fuzz_stack, AGENTS[topic])
    assert not problems and not extra, report(spec, profile.model, cases, problems, extra)


async def lock_effects(fuzz_stack: FuzzStack, observer: Observer, cases: list[fuzz.Case]) -> list[str]:
    """Ask the status of every tenant the bad commands named: none may hold a lock."""
    tenants = sorted({case.subject for case in cases if case.subject and re.fullmatch(r"fz\w+-lock-\d+", case.subject)})
    queries = [valid_case(f"status {t}", lock(t, "status", user="viewer"), t.encode())
               for t in tenants]
    await send(fuzz_stack.stack.bootstrap, LOCK_COMMANDS.name, queries)
    ids = {query.event_id for query in queries}
    await wait_until(observer, lambda: ids <= set(observer.answers(LOCK_COMMANDS)), timeout=20)
    answers = observer.answers(LOCK_COMMANDS)
    names: dict[str, list[str]] = {}
    for case in cases:
        if case.subject:
            names.setdefault(case.subject, []).append(case.name)
    letters = observer.letters(LOCK_COMMANDS)
    effects, unanswered = [], 0
    for tenant, query in zip(tenants, queries, strict=True):
        statuses = [(status, record) for record, status, _ in answers.get(query.event_id or "", [])]
        if not statuses:
            unanswered += 1
            for letter in letters.get((query.sent_partition, query.offset), []):
                effects.append(f"tenant {tenant} ({'; '.join(names[tenant])}): a later status query was "
                               f"dead-lettered: {letter.error_class}: {letter.error_message[:150]}")
            continue
        state = decode_event(statuses[0][1].value or b"", LockState)
        if state.status == "active" or state.fencing_token != 0:
            effects.append(f"tenant {tenant} ({'; '.join(names[tenant])}) holds a lock "
                           f"(status {state.status}, fencing token {state.fencing_token}) after bad commands only")
    if unanswered:
        effects.append(f"{unanswered} of {len(queries)} status queries after the battery were not answered")
    return effects


# -- afterwards ----------------------------------------------------------------------------------------------


async def test_after_the_batteries_every_agent_answers_a_valid_record_with_zero_restarts(
    fuzz_stack: FuzzStack, observer: Observer
) -> None:
    bootstrap = fuzz_stack.stack.bootstrap
    enable = lock(f"fz{RUN}-valid", "enable", reason="after the battery", **ADMIN)
    turn = ConversationTurn(tenant=f"fz{RUN}-valid", session_id=f"fz{RUN}-valid", user="ann", prompt="Say hi.",
                            max_tokens=8)
    job = upsert(EMBED_TENANT, "valid", "v", "a valid note after the battery")
    usage = usage_event(USAGE_TENANT, USAGE_HOUR.format(30), 5, 2)
    closer = usage_event(USAGE_TENANT, USAGE_CLOSER, 1, 0)
    await send(bootstrap, LOCK_COMMANDS.name, [valid_case("valid lock", enable, enable.tenant.encode())])
    await send(bootstrap, CONVERSATION_TURNS.name, [valid_case("valid turn", turn, turn.session_id.encode())])
    await send(bootstrap, EMBEDDING_JOBS.name, [valid_case("valid job", job, job.tenant.encode())])
    await send(bootstrap, USAGE_EVENTS.name, [valid_case("valid usage", usage, usage.tenant.encode())])
    await send(bootstrap, USAGE_EVENTS.name, [valid_case("closer", closer, closer.tenant.encode())])

    def hour_totals() -> list[UsageReport]:
        return [report for _, report in observer.events(USAGE_REPORTS.name, UsageReport)
                if report.tenant == USAGE_TENANT and report.report == "rollup" and report.window == "hour"
                and report.provider is None and report.window_start is not None and report.window_start.hour == 10]

    def done() -> bool:
        return ({enable.event_id} <= set(observer.answers(LOCK_COMMANDS))
                and {turn.event_id} <= set(observer.answers(CONVERSATION_TURNS))
                and {job.event_id} <= set(observer.answers(EMBEDDING_JOBS)) and bool(hour_totals()))

    await wait_until(observer, done, timeout=120)
    problems = []
    lock_answers = [status for _, status, _ in observer.answers(LOCK_COMMANDS).get(enable.event_id, [])]
    if lock_answers != ["active"]:
        problems.append(f"locks: a valid enable was answered {lock_answers}, expected ['active']")
    turn_answers = [status for _, status, _ in observer.answers(CONVERSATION_TURNS).get(turn.event_id, [])]
    if turn_answers != ["completed"]:
        problems.append(f"conversation: a valid turn ended {turn_answers}, expected ['completed']")
    job_answers = [status for _, status, _ in observer.answers(EMBEDDING_JOBS).get(job.event_id, [])]
    if job_answers != ["ok"]:
        problems.append(f"embeddings: a valid upsert was answered {job_answers}, expected ['ok']")
    totals = [(r.events, r.input_tokens, r.output_tokens) for r in hour_totals()]
    if totals != [(1, 5, 2)]:
        problems.append(f"usage: the 10:00 rollup of {USAGE_TENANT} (events, input, output) is {totals}, expected "
                        "[(1, 5, 2)]: the valid event alone, none of the battery's")
    problems += restart_problems(fuzz_stack, *AGENTS.values())
    assert not problems, "after the batteries:\n  " + "\n  ".join(problems)
