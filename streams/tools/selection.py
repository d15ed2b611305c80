"""What an operator command selects: time bounds, rates, and filters on key, tenant, header and field.

Pure functions and small value objects, shared by ``soma tail``, ``soma replay``, ``soma dlq`` and
``soma offsets``, so that ``--since 2h`` or ``--field action=enable`` mean the same in every command.
Parsing errors raise :class:`~streams.tools.exceptions.ArgumentError` with a message that says what
is accepted; the commands turn it into a usage error (exit code 2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import SchemaError, decode_any, decode_event, to_json_dict
from schemas.codec import is_avro_framed, read_json_object
from streams.catalog import CATALOG, DLQ_SUFFIX
from streams.skips import describe_error
from streams.tools.exceptions import ArgumentError

__all__ = [
    "Decoded",
    "RecordFilter",
    "TimeRange",
    "decode_value",
    "format_ms",
    "parse_assignments",
    "parse_pairs",
    "parse_rate",
    "parse_time",
]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_TIME_HELP = (
    "expected an ISO-8601 time (2026-11-25T08:00:00Z, 2026-11-25), epoch milliseconds, 'now', "
    "'today', 'yesterday', or a duration before now such as 90s, 15m, 2h, 1d, 1h30m (also '-2h', '2h ago')"
)


def parse_time(text: str, now_ms: int) -> int:
    """A point in time as epoch milliseconds (UTC), from the forms operators type.

    Relative durations count back from ``now_ms``; dates without a zone are UTC; ``today`` and
    ``yesterday`` are the starts of those UTC days.
    """
    value = text.strip().lower()
    if not value:
        raise ArgumentError(f"empty time; {_TIME_HELP}")
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "now":
        return now_ms
    if value == "today":
        return _ms(midnight)
    if value == "yesterday":
        return _ms(midnight - timedelta(days=1))
    if value.isdigit():
        if len(value) < 11:
            raise ArgumentError(f"{text!r} looks like seconds; times as numbers are epoch milliseconds")
        return int(value)
    relative = value.removeprefix("-").removesuffix(" ago").replace(" ", "")
    if _DURATION.fullmatch(relative) or re.fullmatch(rf"(?:{_DURATION.pattern})+", relative):
        seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(relative))
        return now_ms - int(seconds * 1000)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ArgumentError(f"cannot read the time {text!r}: {_TIME_HELP}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _ms(parsed)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def format_ms(ms: int | None) -> str:
    """Epoch milliseconds as a compact ISO-8601 UTC time, for tables and plans."""
    if ms is None or ms < 0:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class TimeRange:
    """``since <= timestamp <= until``; either bound may be open."""

    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, now_ms: int) -> TimeRange:
        since_ms = parse_time(since, now_ms) if since else None
        until_ms = parse_time(until, now_ms) if until else None
        if since_ms is not None and until_ms is not None and until_ms < since_ms:
            raise ArgumentError(f"--until ({format_ms(until_ms)}) is before --since ({format_ms(since_ms)})")
        return cls(since_ms, until_ms)

    @property
    def bounded(self) -> bool:
        return self.since_ms is not None or self.until_ms is not None

    def __contains__(self, timestamp_ms: object) -> bool:
        if not isinstance(timestamp_ms, int):
            return False
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and timestamp_ms > self.until_ms)

    def describe(self) -> str:
        if not self.bounded:
            return "any time"
        return f"{format_ms(self.since_ms) if self.since_ms is not None else 'start'} .. " \
               f"{format_ms(self.until_ms) if self.until_ms is not None else 'end'}"


def parse_rate(text: str | None) -> float | None:
    """``--rate``: events per second, as ``500``, ``500/s``, ``30000/m`` or ``1000/h``; None: unlimited."""
    if text is None or text == "":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h))?\s*", text.lower())
    if not match:
        raise ArgumentError(f"cannot read the rate {text!r}: expected events per second such as 500 or 500/s "
                            "(or 30000/m, 1000/h)")
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[match.group(2) or "s"]
    rate = float(match.group(1)) / per
    if rate <= 0:
        raise ArgumentError("the rate must be above zero")
    return rate


def parse_pairs(values: Iterable[str], option: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options (``--header``, ``--field``) as pairs, with a clear error for a bad one."""
    pairs = []
    for value in values:
        name, sep, expected = value.partition("=")
        if not sep or not name.strip():
            raise ArgumentError(f"{option} takes NAME=VALUE, got {value!r}")
        pairs.append((name.strip(), expected))
    return pairs


def parse_assignments(values: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """``--set FIELD=VALUE``: the value is read as JSON when it is JSON (5, true, null, [..]), else text."""
    assigned: dict[str, Any] = {}
    for name, raw in parse_pairs(values, option):
        try:
            assigned[name] = json.loads(raw)
        except ValueError:
            assigned[name] = raw
    return assigned


@dataclass(frozen=True)
class Decoded:
    """A record value read for display and filtering: JSON-able data, or why it could not be read."""

    data: Any
    error: str | None = None
    avro: bool = False

    @property
    def fields(self) -> dict[str, Any] | None:
        return self.data if isinstance(self.data, dict) and self.error is None else None


def decode_value(topic: str, value: bytes | None) -> Decoded:
    """Avro (any known schema) or a JSON object → data; dead-letter entries are decoded as their original.

    Never raises: a value that does not decode or validate — whatever the decoder raised, not only
    SchemaError (a date out of range is an OverflowError, deep nesting a RecursionError) — comes back
    as its text (or hex when it is not UTF-8) with ``error`` saying why, so a command reading a topic
    shows the bad record and goes on to the next.
    """
    if value is None:
        return Decoded(None)
    try:
        if is_avro_framed(value):
            return Decoded(to_json_dict(decode_any(value)), avro=True)
        base = topic.removesuffix(DLQ_SUFFIX)
        spec = CATALOG.get(base)
        if spec is not None and not topic.endswith(DLQ_SUFFIX):
            return Decoded(to_json_dict(decode_event(value, spec.model)))
        return Decoded(read_json_object(value))
    except Exception as exc:
        reason = exc.reason if isinstance(exc, SchemaError) else describe_error(exc)
        try:
            text: Any = value.decode("utf-8")
        except UnicodeDecodeError:
            return Decoded(value.hex(), f"{reason} (not UTF-8; shown as hex)")
        return Decoded(text, reason)


def _field_matches(data: dict[str, Any] | None, path: str, expected: str) -> bool:
    current: Any = data
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False
    if isinstance(current, list):  # "roles=admin" matches a list that contains "admin"
        return any(_scalar_equals(item, expected) for item in current) or _scalar_equals(current, expected)
    return _scalar_equals(current, expected)


def _scalar_equals(value: Any, expected: str) -> bool:
    if isinstance(value, str):
        return value == expected
    return json.dumps(value) == expected or str(value) == expected


@dataclass(frozen=True)
class RecordFilter:
    """Which records a command keeps. Repeated ``--key`` / ``--tenant`` values are alternatives (any
    matches); every ``--header`` and ``--field`` must match; all kinds given must match together."""

    keys: frozenset[bytes] = frozenset()
    tenants: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    partitions: frozenset[int] = frozenset()
    time: TimeRange = field(default_factory=TimeRange)

    @classmethod
    def from_options(
        cls,
        keys: Sequence[str] = (),
        tenants: Sequence[str] = (),
        headers: Sequence[str] = (),
        fields: Sequence[str] = (),
        partitions: Sequence[int] = (),
        time: TimeRange | None = None,
    ) -> RecordFilter:
        return cls(
            keys=frozenset(key.encode() for key in keys),
            tenants=frozenset(tenants),
            headers=tuple(parse_pairs(headers, "--header")),
            fields=tuple(parse_pairs(fields, "--field")),
            partitions=frozenset(partitions),
            time=time or TimeRange(),
        )

    @property
    def needs_value(self) -> bool:
        """Whether matching has to decode the value (tenant and field filters do)."""
        return bool(self.tenants or self.fields)

    def matches_envelope(self, partition: int, timestamp: int, key: bytes | None,
                         headers: Sequence[tuple[str, bytes]] | None) -> bool:
        """The checks that need no decoding; cheap, so they run first."""
        if self.partitions and partition not in self.partitions:
            return False
        if self.time.bounded and timestamp not in self.time:
            return False
        if self.keys and key not in self.keys:
            return False
        if self.headers:
            present = {name: raw for name, raw in headers or ()}
            for name, expected in self.headers:
                raw = present.get(name)
                if raw is None or raw.decode("utf-8", "replace") != expected:
                    return False
        return True

    def matches_value(self, data: dict[str, Any] | None) -> bool:
        """Tenant and field checks on the decoded value (None: not decodable, so no match)."""
        if not self.needs_value:
            return True
        if data is None:
            return False
        if self.tenants and data.get("tenant") not in self.tenants:
            return False
        return all(_field_matches(data, path, expected) for path, expected in self.fields)

    def describe(self) -> str:
        parts = []
        if self.partitions:
            parts.append("partitions " + ",".join(str(p) for p in sorted(self.partitions)))
        if self.time.bounded:
            parts.append("time " + self.time.describe())
        if self.keys:
            parts.append("key " + " | ".join(sorted(k.decode("utf-8", "replace") for k in self.keys)))
        if self.tenants:
            parts.append("tenant " + " | ".join(sorted(self.tenants)))
        parts += [f"header {name}={value}" for name, value in self.headers]
        parts += [f"field {name}={value}" for name, value in self.fields]
        return "; ".join(parts) or "everything"
