"""``soma tail TOPIC``: print a topic's events decoded (Avro or JSON → one JSON object per line)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
from aiokafka import TopicPartition
from faust.cli import argument, option

from streams.catalog import DLQ_SUFFIX, topic_spec
from streams.cli import SomaCommand, command
from streams.dlq import parse_dlq_headers
from streams.exceptions import UnknownTopicError
from streams.tools.cluster import Cluster, stop_consumer
from streams.tools.common import FILTER_OPTIONS, emit_json, tool_errors
from streams.tools.exceptions import ArgumentError
from streams.tools.scan import scan_consumer
from streams.tools.selection import RecordFilter, TimeRange, decode_value

__all__ = ["decode_for_display", "record_line"]


def decode_for_display(topic: str, value: bytes | None) -> tuple[Any, str | None]:
    """The value as JSON-able data, and an error when it could not be decoded."""
    decoded = decode_value(topic, value)
    return decoded.data, decoded.error


def record_line(topic: str, message: Any, decoded: Any = None) -> dict[str, Any]:
    """One record as tail prints it; dead-letter entries also get their ``dlq.*`` headers parsed."""
    decoded = decoded if decoded is not None else decode_value(topic, message.value)
    line: dict[str, Any] = {
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": message.timestamp,
        "key": message.key.decode("utf-8", "replace") if message.key is not None else None,
        "headers": {name: raw.decode("utf-8", "replace") for name, raw in message.headers or ()},
        "value": decoded.data,
    }
    if decoded.error:
        line["decode_error"] = decoded.error
    if topic.endswith(DLQ_SUFFIX):
        letter = parse_dlq_headers(list(message.headers or ()))
        line["dlq"] = {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset,
                       "timestamp": letter.timestamp, "error_class": letter.error_class,
                       "error_message": letter.error_message, "attempts": letter.attempts, "agent": letter.agent}
    return line


@command(
    argument("topic"),
    option("--from", "start", type=click.Choice(["earliest", "latest"]), default=None,
           help="Start at the first retained event (default) or only show new ones."),
    option("--offset", type=int, default=None,
           help="Start at this offset in every partition read (combine with --partition)."),
    *FILTER_OPTIONS,
    option("--follow", "-f", is_flag=True, default=False, help="Keep waiting for new events (Ctrl-C stops)."),
    option("--limit", "-n", type=int, default=0, help="Stop after this many events (0: no limit)."),
    option("--idle-timeout", type=float, default=2.0,
           help="Without --follow, give up after this many seconds without records although more were expected."),
)
@tool_errors
async def tail(self: SomaCommand, topic: str, start: str | None, offset: int | None, partitions: tuple[int, ...],
               keys: tuple[str, ...], tenants: tuple[str, ...], headers: tuple[str, ...], fields: tuple[str, ...],
               since: str | None, until: str | None, follow: bool, limit: int, idle_timeout: float) -> None:
    """Print the events of TOPIC, one JSON object per line, decoded from Avro or JSON.

    Each line has partition, offset, timestamp (epoch ms), key, headers and the decoded value. On a
    dead-letter topic (<topic>.dlq) the value is the original event as far as it can be read, plus a
    "dlq" object with the reason from the dlq.* headers. Without --follow it stops at the end of the
    topic as it was when it started.

    Where to start: --from earliest (default), --from latest, --offset N, or --since TIME (the first
    record at or after TIME). Filters: --partition, --key, --tenant, --header NAME=VALUE,
    --field PATH=VALUE, --since/--until; all given must match.

    \b
    Examples:
      soma tail soma.training.lock.state --tenant acme --since 1h
      soma tail soma.training.lock.commands --field action=enable -f
      soma tail soma.training.lock.commands.dlq --header dlq.error.class=DecodeError -n 5
      soma tail soma.usage.events --partition 2 --offset 1200 -n 10
    """
    if sum(x is not None for x in (start, offset, since)) > 1:
        raise ArgumentError("give only one of --from, --offset and --since")
    if limit < 0:
        raise ArgumentError("--limit must be 0 (no limit) or more")
    now = int(time.time() * 1000)
    selected = RecordFilter.from_options(keys, tenants, headers, fields, partitions, TimeRange.parse(since, until, now))
    settings = self.settings
    async with Cluster(settings) as cluster:
        if topic not in await cluster.topics():
            try:
                topic_spec(topic)  # a catalog topic: the worker has not created it yet
            except UnknownTopicError as exc:
                raise click.UsageError(f"no topic {topic!r} on the cluster; {exc}") from None
        tps = await cluster.topic_partitions(topic, partitions)
        begins = await cluster.beginning_offsets(tps)
        ends = await cluster.end_offsets(tps)
        if offset is not None:
            starts = {tp: min(max(offset, begins[tp]), ends[tp]) for tp in tps}
        elif selected.time.since_ms is not None:
            starts = await cluster.offsets_for_time(tps, selected.time.since_ms, ends)
        elif start == "latest":
            starts = dict(ends)
        else:
            starts = dict(begins)
    consumer = await scan_consumer(settings, max_poll_records=2000)
    try:
        await _print(consumer, topic, tps, starts, ends, selected, follow, limit, idle_timeout)
    finally:
        await stop_consumer(consumer)


async def _print(consumer: Any, topic: str, tps: list[TopicPartition], starts: dict[TopicPartition, int],
                 ends: dict[TopicPartition, int], selected: RecordFilter, follow: bool, limit: int,
                 idle_timeout: float) -> None:
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, starts[tp])
    remaining = {tp for tp in tps if starts[tp] < ends[tp]}
    shown = 0
    last_seen = time.monotonic()
    while follow or remaining:
        fetched = await consumer.getmany(timeout_ms=200)
        if fetched:
            last_seen = time.monotonic()
        for messages in fetched.values():
            for message in messages:
                if not selected.matches_envelope(message.partition, message.timestamp, message.key,
                                                 message.headers):
                    continue
                decoded = decode_value(topic, message.value)
                if not selected.matches_value(decoded.fields):
                    continue
                emit_json(record_line(topic, message, decoded))
                shown += 1
                if limit and shown >= limit:
                    return
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if not follow and remaining and time.monotonic() - last_seen > idle_timeout:
            return
        await asyncio.sleep(0)
