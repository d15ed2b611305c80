"""``soma dlq list|show|redrive``: what is in the dead-letter topics, why, and sending it back.

Each entry of ``<topic>.dlq`` is the original key and bytes of an event an agent could not process,
with ``dlq.*`` headers naming the original topic, partition, offset, timestamp, the error class and
message (``streams/dlq.py``). ``list`` groups entries by error class, ``show`` prints them, and
``redrive`` sends selected entries back to their original topic once the cause is fixed:

- the value and key are sent unchanged (the event keeps its ``event_id``, so an entry that was in
  fact processed is dropped by the agent as a duplicate), partitioned by key as a producer would;
- the ``dlq.*`` headers are removed and ``redrive.*`` headers added (re-drive id, where the entry sat
  in the DLQ, its error class, its original partition/offset/timestamp); the record timestamp is the
  time of the re-drive, because an old timestamp could put the record past the topic's retention;
- every entry the broker acknowledged is appended to the re-drive record, a JSON-lines file
  (``<SOMA_DATA_DIR>/redrive.jsonl`` unless ``--record FILE``): one line per entry with the re-drive
  id and time, the DLQ position, the error, the original position, and where it was written. Entries
  already in the record are not re-driven again unless ``--again`` is given.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
from faust.cli import argument, option

from streams.catalog import CATALOG, DLQ_SUFFIX
from streams.cli import SomaCommand, command
from streams.dlq import DeadLetter, parse_dlq_headers
from streams.kafka import producer_factory
from streams.settings import Settings
from streams.tools.cluster import Cluster, start_client, stop_consumer
from streams.tools.common import FILTER_OPTIONS, JSON_OPTION, emit_json, progress, tool_errors, wants_json
from streams.tools.exceptions import ArgumentError, ToolError
from streams.tools.scan import OffsetRange, scan, scan_consumer
from streams.tools.selection import Decoded, RecordFilter, TimeRange, decode_value, format_ms, parse_rate
from streams.tools.sender import BatchSender, RateLimiter
from streams.tools.tail import record_line

__all__ = ["Entry", "RedriveRecord", "dlq_name", "group_by_class", "redrive_headers"]

REDRIVE_ID = "redrive.id"
_REDRIVE_PREFIX = "redrive."
_DLQ_PREFIX = "dlq."


def dlq_name(topic: str) -> str:
    """``soma.x`` or ``soma.x.dlq`` → ``soma.x.dlq``, for an input topic of the catalog."""
    base = topic.removesuffix(DLQ_SUFFIX)
    spec = CATALOG.get(base)
    if spec is None or not spec.is_input:
        known = ", ".join(sorted(s.dlq for s in CATALOG.values() if s.is_input))
        raise ArgumentError(f"{topic!r} is not a dead-letter topic; they are: {known}")
    return spec.dlq


@dataclass
class Entry:
    """One DLQ record, its dead-letter headers read back."""

    topic: str
    record: Any
    letter: DeadLetter
    decoded: Decoded | None = None

    @property
    def position(self) -> tuple[str, int, int]:
        return self.topic, self.record.partition, self.record.offset

    def decode(self) -> Decoded:
        if self.decoded is None:
            self.decoded = decode_value(self.topic, self.record.value)
        return self.decoded

    def to_json(self, redriven: bool) -> dict[str, Any]:
        line = record_line(self.topic, self.record, self.decode())
        line["redriven"] = redriven
        return line


def redrive_headers(original: Iterable[tuple[str, bytes]], redrive_id: str, entry: Entry) -> list[tuple[str, bytes]]:
    """Original headers without ``dlq.*`` (and an earlier re-drive's), plus this re-drive's."""
    letter = entry.letter
    kept = [(n, v) for n, v in original if not n.startswith(_DLQ_PREFIX) and not n.startswith(_REDRIVE_PREFIX)]
    return [
        *kept,
        (REDRIVE_ID, redrive_id.encode()),
        ("redrive.dlq.topic", entry.topic.encode()),
        ("redrive.dlq.partition", str(entry.record.partition).encode()),
        ("redrive.dlq.offset", str(entry.record.offset).encode()),
        ("redrive.error.class", letter.error_class.encode()),
        ("redrive.original.partition", str(letter.partition).encode()),
        ("redrive.original.offset", str(letter.offset).encode()),
        ("redrive.original.timestamp", str(letter.timestamp).encode()),
    ]


class RedriveRecord:
    """The JSON-lines file of what was re-driven (module docstring), read to skip entries done before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[tuple[str, int, int]] = set()
        self.unreadable = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.done.add((entry["dlq_topic"], int(entry["dlq_partition"]), int(entry["dlq_offset"])))
                except (ValueError, KeyError, TypeError):
                    self.unreadable += 1

    def open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("a", encoding="utf-8")


@dataclass
class ClassSummary:
    error_class: str
    count: int = 0
    redriven: int = 0
    first_timestamp: int | None = None
    last_timestamp: int | None = None
    agents: set[str] = field(default_factory=set)
    original_topics: set[str] = field(default_factory=set)
    example: str = ""

    def add(self, entry: Entry, redriven: bool) -> None:
        ts = entry.record.timestamp
        self.count += 1
        self.redriven += int(redriven)
        self.first_timestamp = ts if self.first_timestamp is None else min(self.first_timestamp, ts)
        self.last_timestamp = ts if self.last_timestamp is None else max(self.last_timestamp, ts)
        if entry.letter.agent:
            self.agents.add(entry.letter.agent)
        if entry.letter.topic:
            self.original_topics.add(entry.letter.topic)
        if not self.example:
            self.example = entry.letter.error_message

    def to_json(self) -> dict[str, Any]:
        return {"error_class": self.error_class, "count": self.count, "redriven": self.redriven,
                "first_timestamp": self.first_timestamp, "last_timestamp": self.last_timestamp,
                "agents": sorted(self.agents), "original_topics": sorted(self.original_topics),
                "example": self.example}


def group_by_class(entries: Iterable[Entry], done: set[tuple[str, int, int]]) -> list[ClassSummary]:
    """Entries grouped by error class, biggest group first."""
    groups: dict[str, ClassSummary] = {}
    for entry in entries:
        name = entry.letter.error_class or "(no dlq.error.class header)"
        groups.setdefault(name, ClassSummary(name)).add(entry, entry.position in done)
    return sorted(groups.values(), key=lambda group: (-group.count, group.error_class))


@dataclass
class Selection:
    records: RecordFilter
    error_classes: frozenset[str] = frozenset()
    entries: frozenset[tuple[int, int]] = frozenset()
    limit: int = 0

    def matches(self, entry: Entry) -> bool:
        record = entry.record
        if self.entries and (record.partition, record.offset) not in self.entries:
            return False
        if self.error_classes and entry.letter.error_class not in self.error_classes:
            return False
        if not self.records.matches_envelope(record.partition, record.timestamp, record.key, record.headers):
            return False
        return not self.records.needs_value or self.records.matches_value(entry.decode().fields)


def _parse_entries(values: Iterable[str]) -> frozenset[tuple[int, int]]:
    parsed = set()
    for value in values:
        partition, sep, offset = value.partition(":")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ArgumentError(f"--entry takes PARTITION:OFFSET of a DLQ record, got {value!r}")
        parsed.add((int(partition), int(offset)))
    return frozenset(parsed)


async def read_entries(settings: Settings, dlq: str, selection: Selection) -> list[Entry]:
    """The selected entries of one DLQ as it is now, in partition/offset order."""
    async with Cluster(settings) as cluster:
        if dlq not in await cluster.topics():
            return []
        tps = await cluster.topic_partitions(dlq, selection.records.partitions)
        begins = await cluster.beginning_offsets(tps)
        ends = await cluster.end_offsets(tps)
    ranges = {tp: OffsetRange(begins[tp], ends[tp]) for tp in tps}
    consumer = await scan_consumer(settings)
    selected: list[Entry] = []
    try:
        with progress(sum(r.size for r in ranges.values()), f"reading {dlq}") as bar:
            async for records in scan(consumer, ranges):
                bar.update(len(records))
                for record in records:
                    entry = Entry(dlq, record, parse_dlq_headers(list(record.headers or ())))
                    if selection.matches(entry):
                        selected.append(entry)
    finally:
        await stop_consumer(consumer)
    selected.sort(key=lambda entry: (entry.record.partition, entry.record.offset))
    return selected[: selection.limit] if selection.limit else selected


async def _existing_dlqs(settings: Settings) -> list[str]:
    async with Cluster(settings) as cluster:
        present = await cluster.topics()
    return [spec.dlq for spec in CATALOG.values() if spec.is_input and spec.dlq in present]


# -- the command ------------------------------------------------------------------------------------


@command(
    argument("action", type=click.Choice(["list", "show", "redrive"])),
    argument("topics", nargs=-1),
    option("--error-class", "error_classes", multiple=True,
           help="Only entries with this dlq.error.class (repeat: any of them)."),
    option("--entry", "entries", multiple=True, metavar="PARTITION:OFFSET",
           help="Only this DLQ record (repeat for more)."),
    *FILTER_OPTIONS,
    option("--limit", "-n", type=int, default=0, help="At most this many entries (0: all)."),
    option("--rate", default=None, metavar="N[/s]", help="redrive: send at most N entries per second."),
    option("--record", "record_path", default=None, metavar="FILE",
           help="redrive: the JSON-lines record of re-driven entries  [default: <SOMA_DATA_DIR>/redrive.jsonl]"),
    option("--again", is_flag=True, default=False,
           help="redrive: also send entries the record says were re-driven before."),
    option("--execute", is_flag=True, default=False, help="redrive: send. Without it, only show the plan."),
    JSON_OPTION,
)
@tool_errors
async def dlq(self: SomaCommand, action: str, topics: tuple[str, ...], error_classes: tuple[str, ...],
              entries: tuple[str, ...], partitions: tuple[int, ...], keys: tuple[str, ...], tenants: tuple[str, ...],
              headers: tuple[str, ...], fields: tuple[str, ...], since: str | None, until: str | None, limit: int,
              rate: str | None, record_path: str | None, again: bool, execute: bool, as_json: bool) -> None:
    """Inspect dead-letter topics and re-drive their entries: ACTION is list, show or redrive.

    \b
    list [TOPIC...]   entries per DLQ grouped by error class: count, time span, agents, an example
                      reason, how many were re-driven already (default: every DLQ)
    show TOPIC        the entries, one per line (JSON lines with --json): position, time, error
                      class and message, key, the original value decoded where possible
    redrive TOPIC     send selected entries back to the topic named in their dlq.original.topic
                      header: dry run by default, --execute to send, --rate to pace; dlq.* headers
                      are replaced by redrive.* ones and each sent entry is appended to the record
                      file (--record); entries already recorded are skipped unless --again

    TOPIC is an input topic or its DLQ (soma.training.lock.commands or ...commands.dlq). Entries
    are selected with --error-class, --entry PARTITION:OFFSET, --partition, --key, --tenant,
    --header, --field (on the original event), --since/--until (record time) and --limit.

    \b
    Examples:
      soma dlq list
      soma dlq show soma.training.lock.commands --error-class DecodeError -n 20
      soma dlq redrive soma.training.lock.commands --error-class EventTooLarge --since 6h
      soma dlq redrive soma.training.lock.commands --error-class EventTooLarge --since 6h --rate 200 --execute
    """
    if limit < 0:
        raise ArgumentError("--limit must be 0 (all) or more")
    if action != "redrive" and (execute or again or rate or record_path):
        raise ArgumentError(f"--execute, --again, --rate and --record are options of 'redrive', not of {action!r}")
    if action in ("show", "redrive") and len(topics) != 1:
        raise ArgumentError(f"'dlq {action}' takes one TOPIC, e.g. soma dlq {action} soma.training.lock.commands")
    now = int(time.time() * 1000)
    selection = Selection(
        RecordFilter.from_options(keys, tenants, headers, fields, partitions, TimeRange.parse(since, until, now)),
        frozenset(error_classes), _parse_entries(entries), limit,
    )
    settings = self.settings
    record = RedriveRecord(Path(record_path) if record_path else settings.data_dir / "redrive.jsonl")
    as_json = wants_json(self, as_json)
    if action == "list":
        names = [dlq_name(topic) for topic in topics] if topics else await _existing_dlqs(settings)
        await _list(settings, names, selection, record, as_json)
    elif action == "show":
        await _show(settings, dlq_name(topics[0]), selection, record, as_json)
    else:
        await _redrive(settings, dlq_name(topics[0]), selection, record, again, parse_rate(rate), execute, as_json)


async def _list(settings: Settings, names: list[str], selection: Selection, record: RedriveRecord,
                as_json: bool) -> None:
    report: list[dict[str, Any]] = []
    for name in names:
        found = await read_entries(settings, name, selection)
        report.append({"topic": name, "entries": len(found),
                       "classes": [group.to_json() for group in group_by_class(found, record.done)]})
    if as_json:
        emit_json({"dlqs": report})
        return
    for dlq_report in report:
        click.echo(f"{dlq_report['topic']}: {dlq_report['entries']} entries")
        for group in dlq_report["classes"]:
            span = f"{format_ms(group['first_timestamp'])} .. {format_ms(group['last_timestamp'])}"
            click.echo(f"  {group['error_class']:<24} {group['count']:>6}  {span}  agents "
                       f"{','.join(group['agents']) or '-'}  re-driven {group['redriven']}")
            click.echo(f"  {'':<24} e.g. {group['example'][:160]}")


async def _show(settings: Settings, name: str, selection: Selection, record: RedriveRecord, as_json: bool) -> None:
    for entry in await read_entries(settings, name, selection):
        redriven = entry.position in record.done
        if as_json:
            emit_json(entry.to_json(redriven))
            continue
        letter, rec = entry.letter, entry.record
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else "-"
        click.echo(f"p{rec.partition}@{rec.offset}  {format_ms(rec.timestamp)}  {letter.error_class}  key={key}  "
                   f"from {letter.topic}[{letter.partition}]@{letter.offset}  agent={letter.agent or '-'}  "
                   f"attempts={letter.attempts}{'  (re-driven)' if redriven else ''}")
        click.echo(f"    reason: {letter.error_message}")
        value = entry.decode().data
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        click.echo(f"    value:  {shown[:300]}{'…' if len(shown) > 300 else ''}")


async def _redrive(settings: Settings, name: str, selection: Selection, record: RedriveRecord, again: bool,
                   rate: float | None, execute: bool, as_json: bool) -> None:
    base = name.removesuffix(DLQ_SUFFIX)
    entries = await read_entries(settings, name, selection)
    skipped: dict[str, int] = {}
    chosen: list[Entry] = []
    for entry in entries:
        if not again and entry.position in record.done:
            skipped["re-driven before (see --again)"] = skipped.get("re-driven before (see --again)", 0) + 1
        elif entry.letter.topic != base:
            reason = f"dlq.original.topic is {entry.letter.topic or 'missing'!r}, not {base}"
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            chosen.append(entry)
    by_class: dict[str, int] = {}
    for entry in chosen:
        by_class[entry.letter.error_class] = by_class.get(entry.letter.error_class, 0) + 1
    summary: dict[str, Any] = {
        "dry_run": not execute, "dlq": name, "topic": base, "selected": len(chosen), "by_error_class": by_class,
        "skipped": skipped, "record": str(record.path), "redrive_id": None, "sent": 0, "seconds": 0.0,
        "sample": [entry.to_json(False) for entry in chosen[:3]],
    }
    if execute and chosen:
        redrive_id = str(uuid.uuid4())
        started = time.monotonic()
        summary["sent"] = await _send(settings, base, chosen, redrive_id, record, rate)
        summary["redrive_id"] = redrive_id
        summary["seconds"] = round(time.monotonic() - started, 3)
    if as_json:
        emit_json(summary)
    else:
        if execute and not chosen:
            click.echo(f"nothing to re-drive from {name}")
        elif execute:
            click.echo(f"re-drove {summary['sent']} entries from {name} to {base} (re-drive id "
                       f"{summary['redrive_id']}); recorded in {record.path}")
        else:
            click.echo(f"dry run: {len(chosen)} entries of {name} would go back to {base}; nothing was sent "
                       "(add --execute to send)")
        for error_class, count in sorted(by_class.items()):
            click.echo(f"  {error_class:<24} {count:>6}")
        for reason, count in skipped.items():
            click.echo(f"  skipped {count}: {reason}")
        for line in summary["sample"]:
            click.echo("  e.g. " + json.dumps(line, default=str)[:300])
    if execute and summary["sent"] != len(chosen):
        raise ToolError(f"only {summary['sent']} of {len(chosen)} entries were acknowledged; see {record.path}")


async def _send(settings: Settings, topic: str, chosen: list[Entry], redrive_id: str, record: RedriveRecord,
                rate: float | None) -> int:
    producer = producer_factory(settings, linger_ms=0)
    await start_client(producer, settings)
    handle = record.open()
    at = format_ms(int(time.time() * 1000))

    def delivered(entry: Entry, written_topic: str, partition: int, offset: int) -> None:
        letter = entry.letter
        decoded = entry.decode().fields or {}
        handle.write(json.dumps({
            "redrive_id": redrive_id, "at": at, "dlq_topic": entry.topic, "dlq_partition": entry.record.partition,
            "dlq_offset": entry.record.offset, "error_class": letter.error_class,
            "error_message": letter.error_message, "original_topic": letter.topic,
            "original_partition": letter.partition, "original_offset": letter.offset,
            "original_timestamp": letter.timestamp, "topic": written_topic, "partition": partition, "offset": offset,
            "key": entry.record.key.decode("utf-8", "replace") if entry.record.key is not None else None,
            "event_id": decoded.get("event_id"),
        }) + "\n")

    sender = BatchSender(producer, on_delivered=delivered)
    limiter = RateLimiter(rate)
    try:
        await sender.partitions(topic)
        await limiter.acquire()
        in_chunk = 0
        with progress(len(chosen), "re-driving") as bar:
            for entry in chosen:
                rec = entry.record
                partition = sender.partition_for(topic, rec.key, entry.letter.partition if entry.letter.partition >= 0
                                                 else rec.partition)
                sender.add(topic, partition, rec.key, rec.value, redrive_headers(rec.headers or (), redrive_id, entry),
                           None, entry)
                bar.update(1)
                in_chunk += 1
                if limiter.rate and in_chunk >= limiter.chunk:
                    await sender.ship(everything=True)
                    in_chunk = 0
                    await limiter.acquire()
            await sender.flush()
    finally:
        handle.close()
        await producer.stop()
    return sender.delivered_total
