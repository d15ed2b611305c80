"""``soma tail TOPIC``: print a topic's events decoded (Avro or JSON → one JSON object per line)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click
from aiokafka import TopicPartition
from faust.cli import AppCommand, argument, option

from faust_app import command, settings
from schemas import SchemaError, decode_any, decode_event, to_json_dict
from schemas.codec import is_avro_framed
from streams.catalog import DLQ_SUFFIX, topic_spec
from streams.exceptions import UnknownTopicError
from streams.kafka import consumer_factory

__all__ = ["decode_for_display"]


def decode_for_display(topic: str, value: bytes | None) -> tuple[Any, str | None]:
    """The value as JSON-able data, and an error when it could not be decoded."""
    if value is None:
        return None, None
    if topic.endswith(DLQ_SUFFIX):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return value.hex(), "not UTF-8; shown as hex"
    try:
        if is_avro_framed(value):
            return to_json_dict(decode_any(value)), None
        return to_json_dict(decode_event(value, topic_spec(topic).model)), None
    except (SchemaError, UnknownTopicError) as exc:
        return value.decode("utf-8", "replace"), getattr(exc, "reason", str(exc))


@command(
    argument("topic"),
    option("--from", "start", type=click.Choice(["earliest", "latest"]), default="earliest",
           help="Start at the first retained event or only show new ones."),
    option("--follow", "-f", is_flag=True, default=False, help="Keep waiting for new events (Ctrl-C stops)."),
    option("--limit", "-n", type=int, default=0, help="Stop after this many events (0: no limit)."),
    option("--key", default=None, help="Only events with this key."),
    option("--idle-timeout", type=float, default=2.0,
           help="Without --follow, stop after this many seconds without new events."),
)
async def tail(self: AppCommand, topic: str, start: str, follow: bool, limit: int, key: str | None,
               idle_timeout: float) -> None:
    """Print the events of TOPIC, one JSON object per line, decoded from Avro or JSON.

    Each line has partition, offset, timestamp, key, headers and the decoded value. Dead-letter
    topics (<topic>.dlq) show the original bytes as text plus the dlq.* headers that say why.
    """
    if not topic.endswith(".changelog"):
        try:
            topic_spec(topic)
        except UnknownTopicError as exc:
            raise click.UsageError(str(exc)) from None
    consumer = consumer_factory(settings, group_id=None)
    try:
        await consumer.start()
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    try:
        await consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise click.ClickException(f"topic {topic} does not exist yet (a worker creates it at start)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if start == "earliest":
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        shown = 0
        last_seen = time.monotonic()
        wanted_key = key.encode() if key is not None else None
        while True:
            fetched = await consumer.getmany(timeout_ms=200)
            if fetched:
                last_seen = time.monotonic()
            for messages in fetched.values():
                for message in messages:
                    if wanted_key is not None and message.key != wanted_key:
                        continue
                    value, error = decode_for_display(topic, message.value)
                    line: dict[str, Any] = {
                        "partition": message.partition,
                        "offset": message.offset,
                        "timestamp": message.timestamp,
                        "key": message.key.decode("utf-8", "replace") if message.key is not None else None,
                        "headers": {name: raw.decode("utf-8", "replace") for name, raw in message.headers or ()},
                        "value": value,
                    }
                    if error:
                        line["decode_error"] = error
                    click.echo(json.dumps(line, default=str))
                    shown += 1
                    if limit and shown >= limit:
                        return
            if not follow and time.monotonic() - last_seen > idle_timeout:
                return
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
