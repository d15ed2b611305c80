"""``soma replay SRC --to DST``: copy a selection of records to a topic, dry run first.

The selection is fixed when the command starts (each partition from its first selected offset to the
end offset at that moment), so replaying a topic into itself never reads its own output. Records keep
their key, headers and original timestamp; ``replay.*`` headers say where each copy came from. The
value is copied byte for byte, so replayed events keep their ``event_id`` and agents drop the ones
they already processed; ``--new-ids`` gives every copy a fresh ``event_id`` (``replay.original.event_id``
keeps the old one) so it is processed again, and ``--set FIELD=VALUE`` changes a field on the way.

Sending is batched (:class:`~streams.tools.sender.BatchSender`): per topic-partition record batches,
several in flight, no await per record; ``--rate`` paces whole chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import click
from aiokafka import TopicPartition
from faust.cli import argument, option
from pydantic import ValidationError

from schemas import Envelope, SchemaError, decode_any, encode_event, new_event_id
from schemas.codec import is_avro_framed, read_json_object, validation_reason
from streams.catalog import CATALOG, DLQ_SUFFIX
from streams.cli import SomaCommand, command
from streams.kafka import producer_factory
from streams.settings import Settings
from streams.skips import describe_error
from streams.tools.cluster import Cluster, start_client, stop_consumer
from streams.tools.common import FILTER_OPTIONS, JSON_OPTION, emit_json, progress, tool_errors, wants_json
from streams.tools.exceptions import ArgumentError, ToolError
from streams.tools.rawscan import raw_scan
from streams.tools.scan import OffsetRange, scan, scan_consumer
from streams.tools.selection import (
    RecordFilter,
    TimeRange,
    decode_value,
    format_ms,
    parse_assignments,
    parse_rate,
)
from streams.tools.sender import BatchSender, RateLimiter
from streams.tools.tail import record_line

__all__ = [
    "REPLAY_ID",
    "PartitionStats",
    "ReplayPlan",
    "replay_headers",
    "rewrite_value",
    "run_replay",
]

REPLAY_ID = "replay.id"
ORIGINAL_TOPIC = "replay.original.topic"
ORIGINAL_PARTITION = "replay.original.partition"
ORIGINAL_OFFSET = "replay.original.offset"
ORIGINAL_EVENT_ID = "replay.original.event_id"
_PREFIX = "replay."
_BATCH_BYTES = 1024 * 1024


def replay_headers(original: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...] | None, replay_id: bytes,
                   topic: bytes, partition: bytes, offset: int, event_id: str | None = None) -> list[tuple[str, bytes]]:
    """The record's headers (minus those of an earlier replay) followed by this replay's."""
    kept = [(name, value) for name, value in original or () if not name.startswith(_PREFIX)]
    kept += [(REPLAY_ID, replay_id), (ORIGINAL_TOPIC, topic), (ORIGINAL_PARTITION, partition),
             (ORIGINAL_OFFSET, str(offset).encode())]
    if event_id is not None:
        kept.append((ORIGINAL_EVENT_ID, event_id.encode()))
    return kept


def _assign(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    current = data
    for part in parents:
        nested = current.get(part)
        if not isinstance(nested, dict):
            nested = current[part] = {}
        current = nested
    current[last] = value


def rewrite_value(topic: str, value: bytes, new_id: bool, assignments: dict[str, Any]) -> tuple[bytes, str | None]:
    """The value with a fresh ``event_id`` and/or changed fields, in the wire form it came in.

    Avro stays Avro (re-encoded with the latest schema of its type), JSON stays JSON; either way the
    result is validated against the event's contract. Returns the new bytes and the old event id;
    raises :class:`~schemas.SchemaError` when the value is not a valid event.
    """
    if is_avro_framed(value):
        event = decode_any(value)
        data = event.model_dump()
        old_id = str(data["event_id"])
        for path, assigned in assignments.items():
            _assign(data, path, assigned)
        if new_id:
            data["event_id"] = new_event_id()
        return encode_event(_validated(type(event), data)), old_id
    obj = read_json_object(value)
    old = obj.get("event_id")
    for path, assigned in assignments.items():
        _assign(obj, path, assigned)
    if new_id:
        obj["event_id"] = new_event_id()
    spec = CATALOG.get(topic.removesuffix(DLQ_SUFFIX))
    if spec is not None:
        _validated(spec.model, obj)
    return json.dumps(obj, separators=(",", ":")).encode(), str(old) if old is not None else None


def _validated(model: type[Envelope], data: dict[str, Any]) -> Envelope:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(validation_reason(model.__name__, exc)) from None


@dataclass
class PartitionStats:
    partition: int
    start: int
    end: int
    scanned: int = 0
    selected: int = 0
    skipped: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_timestamp: int | None = None
    last_timestamp: int | None = None

    def take(self, offset: int, timestamp: int) -> None:
        self.selected += 1
        if self.first_offset is None:
            self.first_offset, self.first_timestamp = offset, timestamp
        self.last_offset = offset
        if self.first_timestamp is None or timestamp < self.first_timestamp:
            self.first_timestamp = timestamp
        if self.last_timestamp is None or timestamp > self.last_timestamp:
            self.last_timestamp = timestamp


@dataclass
class ReplayPlan:
    source: str
    destination: str
    selection: RecordFilter
    start_offset: int | None = None
    end_offset: int | None = None
    rate: float | None = None
    new_ids: bool = False
    assignments: dict[str, Any] | None = None
    execute: bool = False
    sample: int = 5


@dataclass
class ReplayResult:
    plan: ReplayPlan
    replay_id: str | None
    partitions: list[PartitionStats]
    sample: list[dict[str, Any]]
    sent: int = 0
    seconds: float = 0.0
    skip_reasons: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        selected = sum(p.selected for p in self.partitions)
        return {
            "dry_run": not self.plan.execute,
            "source": self.plan.source,
            "destination": self.plan.destination,
            "replay_id": self.replay_id,
            "selection": self.plan.selection.describe(),
            "new_ids": self.plan.new_ids,
            "set": self.plan.assignments or {},
            "rate": self.plan.rate,
            "scanned": sum(p.scanned for p in self.partitions),
            "selected": selected,
            "skipped": sum(p.skipped for p in self.partitions),
            "skip_reasons": self.skip_reasons or {},
            "sent": self.sent,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.sent / self.seconds, 1) if self.seconds > 0 and self.sent else None,
            "partitions": [asdict(p) for p in self.partitions],
            "sample": self.sample,
        }


async def run_replay(settings: Settings, plan: ReplayPlan, on_total: Callable[[int], None] | None = None,
                     on_progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Scan the selection and, when ``plan.execute``, send it; the engine of ``soma replay`` (and its bench)."""
    selection = plan.selection
    async with Cluster(settings) as cluster:
        tps = await cluster.topic_partitions(plan.source, selection.partitions)
        await cluster.partitions(plan.destination)
        begins = await cluster.beginning_offsets(tps)
        ends = await cluster.end_offsets(tps)
        starts = dict(begins)
        if plan.start_offset is not None:
            starts = {tp: max(starts[tp], plan.start_offset) for tp in tps}
        if selection.time.since_ms is not None:
            by_time = await cluster.offsets_for_time(tps, selection.time.since_ms, ends)
            starts = {tp: max(starts[tp], by_time[tp]) for tp in tps}
        stops = {tp: ends[tp] if plan.end_offset is None else min(ends[tp], plan.end_offset) for tp in tps}
    ranges = {tp: OffsetRange(min(starts[tp], stops[tp]), stops[tp]) for tp in tps}
    stats = {tp.partition: PartitionStats(tp.partition, r.start, r.end) for tp, r in ranges.items()}
    replay_id = str(uuid.uuid4()) if plan.execute else None
    result = ReplayResult(plan, replay_id, [stats[tp.partition] for tp in tps], [], skip_reasons={})
    if on_total is not None:
        on_total(sum(r.size for r in ranges.values()))
    # An unfiltered, unpaced copy takes the fast path (raw fetches); everything else reads through a consumer.
    simple = plan.execute and not (selection.keys or selection.headers or selection.needs_value or plan.new_ids
                                   or plan.assignments or plan.rate)
    consumer = None if simple else await scan_consumer(settings)
    producer = None
    try:
        sender: BatchSender | None = None
        if plan.execute:
            producer = producer_factory(settings, max_batch_size=_BATCH_BYTES, linger_ms=0)
            await start_client(producer, settings)
            sender = BatchSender(producer)
            await sender.partitions(plan.destination)
        started = time.monotonic()
        if sender is not None and consumer is None:
            await _copy_everything(settings, plan, ranges, stats, result, sender, on_progress, replay_id or "")
        else:
            await _copy(plan, ranges, stats, result, consumer, sender, on_progress, replay_id or "")
        if sender is not None:
            await sender.flush()
            result.sent = sender.delivered_total
        result.seconds = time.monotonic() - started
    finally:
        if consumer is not None:
            await stop_consumer(consumer)
        if producer is not None:
            await producer.stop()
    return result


async def _copy_everything(settings: Settings, plan: ReplayPlan, ranges: dict[TopicPartition, OffsetRange],
                           stats: dict[int, PartitionStats], result: ReplayResult, sender: BatchSender,
                           on_progress: Callable[[int], None] | None, replay_id: str) -> None:
    """The loop of an unfiltered, unpaced copy (time bounds allowed): per record only the headers, the
    partition and an append. Same output as :func:`_copy`, which handles every other case."""
    since, until = plan.selection.time.since_ms, plan.selection.time.until_ms
    destination = plan.destination
    id_bytes, topic_bytes = replay_id.encode(), plan.source.encode()
    prefixes = {tp.partition: [(REPLAY_ID, id_bytes), (ORIGINAL_TOPIC, topic_bytes),
                               (ORIGINAL_PARTITION, str(tp.partition).encode())] for tp in ranges}
    partition_for, add = sender.partition_for, sender.add
    by_key: dict[bytes, int] = {}
    async for tp, records in raw_scan(settings, ranges):
        partition = tp.partition
        stat = stats[partition]
        stat.scanned += len(records)
        if on_progress is not None:
            on_progress(len(records))
        if since is not None or until is not None:
            low = since if since is not None else -(2**63)
            high = until if until is not None else 2**63
            records = [record for record in records if low <= record.timestamp <= high]
            if not records:
                continue
        _take_all(stat, records)
        if len(result.sample) < plan.sample:
            wanted = records[: plan.sample - len(result.sample)]
            result.sample += [record_line(plan.source, _Located(partition, record)) for record in wanted]
        prefix = prefixes[partition]
        for record in records:
            headers = record.headers
            if headers:
                headers = [h for h in headers if not h[0].startswith(_PREFIX)]
                headers += prefix
            else:
                headers = prefix.copy()
            headers.append((ORIGINAL_OFFSET, str(record.offset).encode()))
            key = record.key
            if key is None:
                target = partition_for(destination, None, partition)
            else:
                target = by_key.get(key, -1)
                if target < 0:
                    target = by_key[key] = partition_for(destination, key, partition)
            add(destination, target, key, record.value, headers, record.timestamp)
        await sender.ship()


class _Located:
    """A raw record with its partition, in the shape :func:`record_line` reads."""

    def __init__(self, partition: int, record: Any) -> None:
        self.partition = partition
        self.offset, self.timestamp = record.offset, record.timestamp
        self.key, self.value, self.headers = record.key, record.value, record.headers


def _take_all(stat: PartitionStats, records: list[Any]) -> None:
    """:meth:`PartitionStats.take` for a list in offset order, at list speed."""
    stat.selected += len(records)
    if stat.first_offset is None:
        stat.first_offset = records[0].offset
    stat.last_offset = records[-1].offset
    low = min(record.timestamp for record in records)
    high = max(record.timestamp for record in records)
    stat.first_timestamp = low if stat.first_timestamp is None else min(stat.first_timestamp, low)
    stat.last_timestamp = high if stat.last_timestamp is None else max(stat.last_timestamp, high)


async def _copy(plan: ReplayPlan, ranges: dict[TopicPartition, OffsetRange], stats: dict[int, PartitionStats],
                result: ReplayResult, consumer: Any, sender: BatchSender | None,
                on_progress: Callable[[int], None] | None, replay_id: str) -> None:
    selection = plan.selection
    rewrite = plan.new_ids or bool(plan.assignments)
    assignments = plan.assignments or {}
    source, destination = plan.source, plan.destination
    id_bytes, topic_bytes = replay_id.encode(), source.encode()
    partition_bytes = {tp.partition: str(tp.partition).encode() for tp in ranges}
    limiter = RateLimiter(plan.rate)
    in_chunk = 0
    reasons = result.skip_reasons if result.skip_reasons is not None else {}
    if sender is not None:
        await limiter.acquire()
    async for records in scan(consumer, ranges):
        partition = records[0].partition
        stat = stats[partition]
        stat.scanned += len(records)
        if on_progress is not None:
            on_progress(len(records))
        for record in records:
            if not selection.matches_envelope(partition, record.timestamp, record.key, record.headers):
                continue
            decoded = None
            if selection.needs_value:
                decoded = decode_value(source, record.value)
                if not selection.matches_value(decoded.fields):
                    continue
            value, old_id = record.value, None
            if rewrite:
                try:
                    value, old_id = rewrite_value(source, record.value or b"", plan.new_ids, assignments)
                except Exception as exc:  # any decoder error, not only SchemaError: skip the record, go on
                    stat.skipped += 1
                    reason = (f"{type(exc).__name__}: {exc.reason}" if isinstance(exc, SchemaError)
                              else describe_error(exc))[:200]
                    reasons[reason] = reasons.get(reason, 0) + 1
                    continue
            stat.take(record.offset, record.timestamp)
            if len(result.sample) < plan.sample:
                result.sample.append(record_line(source, record, decoded))
            if sender is None:
                continue
            headers = replay_headers(record.headers, id_bytes, topic_bytes, partition_bytes[partition],
                                     record.offset, old_id if plan.new_ids else None)
            target = sender.partition_for(destination, record.key, partition)
            sender.add(destination, target, record.key, value, headers, record.timestamp)
            if limiter.rate:
                in_chunk += 1
                if in_chunk >= limiter.chunk:
                    await sender.ship(everything=True)
                    in_chunk = 0
                    await limiter.acquire()
        if sender is not None:
            await sender.ship()


def _print_text(result: ReplayResult) -> None:
    plan = result.plan
    if plan.execute:
        click.echo(f"replayed {result.sent} records {plan.source} -> {plan.destination} in {result.seconds:.1f} s "
                   f"(replay id {result.replay_id})")
    else:
        click.echo(f"dry run: {plan.source} -> {plan.destination}; nothing was sent (add --execute to send)")
    click.echo(f"selection: {plan.selection.describe()}"
               + (f"; offsets {plan.start_offset if plan.start_offset is not None else 'start'}"
                  f"..{plan.end_offset if plan.end_offset is not None else 'end'}"
                  if plan.start_offset is not None or plan.end_offset is not None else "")
               + ("; new event ids" if plan.new_ids else "")
               + (f"; set {json.dumps(plan.assignments)}" if plan.assignments else "")
               + (f"; at most {plan.rate:g}/s" if plan.rate else ""))
    click.echo(f"{'partition':>9} {'range':>17} {'scanned':>8} {'selected':>8} {'skipped':>7}  first .. last selected")
    for p in result.partitions:
        span = f"{format_ms(p.first_timestamp)} .. {format_ms(p.last_timestamp)}" if p.selected else "-"
        click.echo(f"{p.partition:>9} {f'{p.start}-{p.end}':>17} {p.scanned:>8} {p.selected:>8} {p.skipped:>7}  {span}")
    total = result.to_json()
    click.echo(f"{'total':>9} {'':>17} {total['scanned']:>8} {total['selected']:>8} {total['skipped']:>7}")
    for reason, count in (result.skip_reasons or {}).items():
        click.echo(f"skipped {count}: {reason}")
    if result.sample:
        click.echo(f"sample (first {len(result.sample)}):")
        for line in result.sample:
            click.echo("  " + json.dumps(line, default=str))


@command(
    argument("source"),
    option("--to", "destination", required=True, metavar="TOPIC", help="Topic to copy the selection to."),
    option("--start-offset", type=int, default=None, help="First offset to consider in each partition read."),
    option("--end-offset", type=int, default=None,
           help="Stop before this offset in each partition read (default: the end when the command starts)."),
    *FILTER_OPTIONS,
    option("--rate", default=None, metavar="N[/s]", help="Send at most N events per second (also N/m, N/h)."),
    option("--new-ids", is_flag=True, default=False,
           help="Give every copy a fresh event_id so agents process it again (the old id goes to the "
                "replay.original.event_id header)."),
    option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
           help="Change a field of every copy, e.g. --set model=new-model (VALUE is JSON or text; use with "
                "--new-ids when agents should act on the copies)."),
    option("--sample", type=int, default=5, help="How many selected records to show."),
    option("--execute", is_flag=True, default=False, help="Send. Without it the command only shows the plan."),
    JSON_OPTION,
)
@tool_errors
async def replay(self: SomaCommand, source: str, destination: str, start_offset: int | None, end_offset: int | None,
                 partitions: tuple[int, ...], keys: tuple[str, ...], tenants: tuple[str, ...],
                 headers: tuple[str, ...], fields: tuple[str, ...], since: str | None, until: str | None,
                 rate: str | None, new_ids: bool, assignments: tuple[str, ...], sample: int, execute: bool,
                 as_json: bool) -> None:
    """Copy records of SOURCE selected by offset, time, partition, key, tenant, header or field to --to.

    A dry run by default: it reads the selection and prints per partition what would be copied, and
    a sample; nothing is sent until --execute is given. Copies keep key, headers and the original
    timestamp and get the headers replay.id, replay.original.topic, replay.original.partition and
    replay.original.offset. Keys are partitioned as a Kafka producer would (murmur2).

    Copies keep their event_id, so replaying events an agent already processed changes nothing
    downstream: the agent drops them as duplicates. Use --new-ids to have them processed again.

    \b
    Examples:
      soma replay soma.usage.events --to soma.usage.events.audit --since yesterday --until today
      soma replay soma.conversation.turns --to soma.conversation.turns --since yesterday \\
          --until today --new-ids --set model=new-model --rate 20/s --execute
      soma replay soma.training.lock.commands --to scratch --tenant acme --field action=enable --json
    """
    if start_offset is not None and end_offset is not None and end_offset < start_offset:
        raise ArgumentError("--end-offset is before --start-offset")
    if sample < 0:
        raise ArgumentError("--sample must be 0 or more")
    now = int(time.time() * 1000)
    plan = ReplayPlan(
        source=source,
        destination=destination,
        selection=RecordFilter.from_options(keys, tenants, headers, fields, partitions,
                                            TimeRange.parse(since, until, now)),
        start_offset=start_offset,
        end_offset=end_offset,
        rate=parse_rate(rate),
        new_ids=new_ids,
        assignments=parse_assignments(assignments),
        execute=execute,
        sample=sample,
    )
    with progress(0, "replaying" if execute else "scanning") as bar:
        result = await run_replay(self.settings, plan, on_total=lambda total: setattr(bar, "length", total),
                                  on_progress=bar.update)
    if as_json or wants_json(self, as_json):
        emit_json(result.to_json())
    else:
        _print_text(result)
    if execute and result.sent != sum(p.selected for p in result.partitions):
        raise ToolError(f"only {result.sent} of {sum(p.selected for p in result.partitions)} selected records "
                        "were acknowledged by the broker")
