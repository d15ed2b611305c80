"""The Quix Streams contestant of ``tests.perf.bench_locks``: the lock agent's rules as a Quix pipeline.

It runs in the Quix virtualenv (``.venv-bench``, made by ``make bench-locks`` / ``make bench-usage``):
quixstreams 3.28 pins ``pydantic<2.14`` while the project needs ``>=2.14``, so the two cannot share one
environment. What of the project it uses there:

- the contracts (:mod:`schemas`): they import and validate under Quix's pydantic 2.13, so commands are
  decoded and validated with ``decode_event(value, LockCommand)`` and answers written with
  ``encode_event(LockState(...))``, the same Confluent-framed Avro as our agent reads and writes. The
  per-event work is therefore the same as ours (and the benchmark checks Quix's answers exactly like
  ours), unlike the usage contestant, which decodes with fastavro alone.
- the rules: ``agents.locks`` itself cannot be imported here (its module also holds the agent, which
  needs the engine, aiokafka and redis), so :func:`_load_rules` executes the pure part of that very file
  (``LockPolicy``, ``LockRecord``, ``decide``, ``expire``, ``state_event``, ``rejected_key`` and their
  helpers) in a module of its own. The rules are the real code, not a copy that could drift.

Pipeline: Avro command → per-key (tenant) state in Quix's RocksDB state store: the event ids seen
(``seen:<id>``, remembered for the dedupe TTL) and the lock record (``lock``) → expire the lock if its TTL
passed (an ``expired`` state event) → ``decide`` → the state event, keyed by the tenant, or
``<tenant>#rejected`` for refusals, as our agent keys them. Like the naive Faust agent it does not mirror
to Redis, and it only checks expiry when a tenant's next command comes (ours also runs a timer).

The embedded broker does not report ``retention.ms`` in its topic configs, which Quix needs to derive its
changelog topics' configs; the input topic's broker config gets it supplied (7 days) below.

Environment: ``QUIX_BOOTSTRAP``, ``QUIX_GROUP``, ``QUIX_INPUT_TOPIC``, ``QUIX_OUTPUT_TOPIC``,
``QUIX_STATE_DIR``, and the lock policy as the benchmark's reference uses it: ``QUIX_ADMIN_ROLES``,
``QUIX_ADMIN_USERS`` (comma-separated), ``QUIX_LOCK_DEFAULT_TTL_SECONDS``, ``QUIX_LOCK_MAX_TTL_SECONDS``,
``QUIX_DEDUPE_TTL_SECONDS``.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import time
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quixstreams import Application, State
from quixstreams.models.serializers import Deserializer, Serializer

from schemas import LockCommand, SchemaError, decode_event, encode_event

logger = logging.getLogger(__name__)

BOOTSTRAP = os.environ.get("QUIX_BOOTSTRAP", "127.0.0.1:9092")
GROUP = os.environ.get("QUIX_GROUP", "quix-locks")
INPUT_TOPIC = os.environ.get("QUIX_INPUT_TOPIC", "quix.lock.commands")
OUTPUT_TOPIC = os.environ.get("QUIX_OUTPUT_TOPIC", "quix.lock.state")
STATE_DIR = os.environ.get("QUIX_STATE_DIR", "./data/quix-locks")
RETENTION_MS = str(7 * 86_400_000)

LOCKS_SOURCE = Path(__file__).resolve().parents[2] / "agents" / "locks.py"
#: The pure part of ``agents/locks.py``: what deciding and publishing an answer needs, nothing of the agent.
RULES = ("LockPolicy", "LockRecord", "Outcome", "_when", "_reject", "decide", "expire", "state_event",
         "rejected_key")


def _load_rules() -> types.ModuleType:
    """The rules of ``agents/locks.py``, executed from that file without its agent and engine imports.

    Every import of the file is tried on its own (the standard library and ``schemas`` are there; the
    engine, the connectors and redis are not, and only the agent needs them); then the definitions
    named in :data:`RULES` are executed. A rule that starts using something left out fails loudly here
    or in the benchmark's check of the answers, not silently.
    """
    tree = ast.parse(LOCKS_SOURCE.read_text(), str(LOCKS_SOURCE))
    module = types.ModuleType("quix_lock_rules")
    module.__file__ = str(LOCKS_SOURCE)
    sys.modules[module.__name__] = module  # dataclasses look their module up while processing a class
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            try:
                exec(compile(ast.Module([node], []), str(LOCKS_SOURCE), "exec"), module.__dict__)
            except ImportError:
                continue
        elif isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in RULES:
            exec(compile(ast.Module([node], []), str(LOCKS_SOURCE), "exec"), module.__dict__)
            found.add(node.name)
    missing = set(RULES) - found
    if missing:
        raise RuntimeError(f"{LOCKS_SOURCE} no longer defines {sorted(missing)}")
    return module


rules = _load_rules()
policy = rules.LockPolicy(
    admin_roles=frozenset(filter(None, os.environ.get("QUIX_ADMIN_ROLES", "admin").split(","))),
    admin_users=frozenset(filter(None, os.environ.get("QUIX_ADMIN_USERS", "").split(","))),
    default_ttl_seconds=int(os.environ.get("QUIX_LOCK_DEFAULT_TTL_SECONDS", "86400")),
    max_ttl_seconds=int(os.environ.get("QUIX_LOCK_MAX_TTL_SECONDS", "604800")),
)
DEDUPE_TTL_MS = int(os.environ.get("QUIX_DEDUPE_TTL_SECONDS", "604800")) * 1000


class AvroLockCommand(Deserializer):
    """Confluent-framed Avro (or JSON) → a validated ``LockCommand``; None for what does not validate."""

    def __call__(self, value: bytes, ctx: Any) -> Any:
        try:
            return decode_event(value, LockCommand)
        except SchemaError as exc:
            # Our agent dead-letters these; the benchmark sends none, so a log line is enough here.
            logger.warning("invalid lock command skipped: %s", exc.reason)
            return None


class AvroAnswer(Serializer):
    """The (key, Avro bytes) pair an answer travels as → its Avro bytes."""

    def __call__(self, value: tuple[str, bytes], ctx: Any) -> bytes:
        return value[1]


def handle(command: LockCommand, state: State) -> list[tuple[str, bytes]]:
    """One command against the tenant's state: the state events to publish, (key, Avro value) each."""
    seen_key = f"seen:{command.event_id}"
    now = int(time.time() * 1000)
    remembered = state.get(seen_key)
    if remembered is not None and remembered > now:
        return []  # a duplicate: no effect, no answer
    state.set(seen_key, now + DEDUPE_TTL_MS)
    tenant = command.tenant
    value = state.get("lock")
    current = rules.LockRecord() if value is None else rules.LockRecord(**value)
    out: list[tuple[str, bytes]] = []
    expired = rules.expire(current, now)
    if expired is not None:
        state.set("lock", asdict(expired))
        event = rules.state_event(tenant, expired, "expired", "expire",
                                  f"TTL passed at {rules._when(expired.expires_at_ms)}")
        out.append((tenant, encode_event(event)))
        current = expired
    outcome = rules.decide(current, command, now, policy)
    if outcome.record is not None:
        state.set("lock", asdict(outcome.record))
        shown, status = outcome.record, outcome.record.status
    else:
        shown, status = outcome.shown, outcome.status
    event = rules.state_event(tenant, shown, status, command.action, outcome.detail, cause=command)
    out.append((rules.rejected_key(tenant) if status == "rejected" else tenant, encode_event(event)))
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app = Application(
        broker_address=BOOTSTRAP,
        consumer_group=GROUP,
        auto_offset_reset="earliest",
        state_dir=STATE_DIR,
        loglevel="WARNING",
    )
    commands = app.topic(INPUT_TOPIC, key_deserializer="str", value_deserializer=AvroLockCommand())
    # The embedded broker does not report retention.ms; Quix derives its changelog configs from it.
    commands.broker_config.extra_config.setdefault("retention.ms", RETENTION_MS)
    states = app.topic(OUTPUT_TOPIC, key_serializer="str", value_serializer=AvroAnswer())

    sdf = app.dataframe(commands)
    sdf = sdf.filter(lambda command: command is not None)
    sdf = sdf.apply(handle, stateful=True, expand=True)
    # Quix stamps an output with its input's timestamp (here: when the benchmark pre-loaded it); stamp it
    # with the time it is produced instead, like the other contestants (the benchmark measures CreateTimes).
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(states, key=lambda value: value[0])
    app.run()


if __name__ == "__main__":
    main()
