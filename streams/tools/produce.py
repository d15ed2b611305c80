"""``soma produce TOPIC [FILE|-]``: send JSON lines as typed events, all or nothing."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
from faust.cli import argument, option
from pydantic import ValidationError

from schemas import Envelope, SchemaError, encode_event, to_json
from schemas.codec import validation_reason
from streams.catalog import TopicSpec, topic_spec
from streams.cli import SomaCommand, command
from streams.exceptions import UnknownTopicError
from streams.kafka import producer_factory
from streams.tools.common import progress

__all__ = ["ParsedLine", "parse_lines"]


@dataclass(frozen=True)
class ParsedLine:
    number: int
    event: Envelope | None
    error: str | None
    raw: str


def parse_lines(spec: TopicSpec, stream: IO[str]) -> list[ParsedLine]:
    """Validate each non-blank line against the topic's contract."""
    parsed = []
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            payload = json.loads(text)
        except ValueError as exc:
            parsed.append(ParsedLine(number, None, f"not valid JSON: {exc}", text))
            continue
        if not isinstance(payload, dict):
            parsed.append(ParsedLine(number, None, "expected a JSON object", text))
            continue
        try:
            parsed.append(ParsedLine(number, spec.model.model_validate(payload), None, text))
        except SchemaError as exc:
            parsed.append(ParsedLine(number, None, exc.reason, text))
        except ValidationError as exc:
            parsed.append(ParsedLine(number, None, validation_reason(spec.model.__name__, exc), text))
        except Exception as exc:  # anything else a validator raises: still a bad line, not a crash
            parsed.append(ParsedLine(number, None, str(exc), text))
    return parsed


def _key_of(spec: TopicSpec, event: Envelope) -> bytes:
    return str(getattr(event, spec.key)).encode()


@command(
    argument("topic"),
    argument("file", default="-", required=False),
    option("--skip-invalid", is_flag=True, default=False,
           help="Send the valid lines and report the invalid ones instead of sending nothing."),
    option("--as-json", "as_json", is_flag=True, default=False,
           help="Send each line as its JSON text instead of Avro (the path producers in other languages use)."),
    option("--json", "json_output", is_flag=True, default=False,
           help="Print the outcome as one JSON document on stdout: sent, skipped lines with reasons, event ids."),
)
async def produce(self: SomaCommand, topic: str, file: str, skip_invalid: bool, as_json: bool,
                  json_output: bool) -> None:
    """Send JSON lines from FILE (or stdin, '-') to TOPIC as typed events.

    Each line is one JSON object with the topic's contract (see the README), validated before anything
    is sent: if any line is invalid nothing is sent and each bad line is reported with its number and
    reason. With --skip-invalid the valid lines are sent and the skipped ones reported. The key is
    the topic's key field (tenant or session_id). Events are sent as Confluent-framed Avro unless
    --as-json is given.

    \b
    Examples:
      echo '{"tenant":"acme","action":"status","user":"ann"}' | soma produce soma.training.lock.commands
      soma produce soma.usage.events usage.jsonl --skip-invalid --json
    """
    try:
        spec = topic_spec(topic)
    except UnknownTopicError as exc:
        raise click.UsageError(str(exc)) from None
    if topic != spec.name:
        raise click.UsageError(f"{topic} is a dead-letter topic; re-drive entries with the dlq tooling instead")
    if file == "-":
        lines = parse_lines(spec, sys.stdin)
    else:
        path = Path(file)
        if not path.is_file():
            raise click.UsageError(f"no such file: {file}")
        with path.open(encoding="utf-8") as handle:
            lines = parse_lines(spec, handle)

    invalid = [line for line in lines if line.error is not None]
    for line in invalid:
        click.echo(f"line {line.number}: {line.error}", err=True)
    if invalid and not skip_invalid:
        if json_output:
            click.echo(json.dumps({"topic": spec.name, "sent": 0, "invalid": _reasons(invalid)}))
        raise click.ClickException(
            f"{len(invalid)} of {len(lines)} lines are invalid; nothing was sent (use --skip-invalid to send the rest)"
        )
    valid = [line for line in lines if line.event is not None]
    if not valid:
        raise click.ClickException("no events to send")

    settings = self.settings
    producer = producer_factory(settings)
    try:
        await producer.start()
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    try:
        futures = []
        with progress(len(valid), "sending") as bar:
            for line in valid:
                assert line.event is not None
                value = to_json(line.event) if as_json else encode_event(line.event)
                # send() only queues the record (aiokafka batches them); delivery is awaited below, once.
                futures.append(await producer.send(spec.name, key=_key_of(spec, line.event), value=value))
                bar.update(1)
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    summary: dict[str, Any] = {"topic": spec.name, "sent": len(valid), "skipped": len(invalid),
                               "skipped_lines": _reasons(invalid),
                               "event_ids": [line.event.event_id for line in valid if line.event]}
    if json_output:
        click.echo(json.dumps(summary))
    elif len(valid) > 1 or invalid:
        click.echo(json.dumps(summary), err=True)
    else:
        click.echo(f"sent 1 event to {spec.name}: {summary['event_ids'][0]}", err=True)


def _reasons(lines: list[ParsedLine]) -> list[dict[str, Any]]:
    return [{"line": line.number, "reason": line.error} for line in lines]
