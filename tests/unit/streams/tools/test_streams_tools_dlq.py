"""Re-drive helpers: headers, grouping by error class, the record of what was re-driven."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams.dlq import DeadLetter, dlq_headers, parse_dlq_headers
from streams.tools.dlq import Entry, RedriveRecord, dlq_name, group_by_class, redrive_headers
from streams.tools.exceptions import ArgumentError

DLQ = "soma.training.lock.commands.dlq"


def _entry(offset: int, error_class: str, timestamp: int = 1000, agent: str = "locks") -> Entry:
    letter = DeadLetter("soma.training.lock.commands", 2, 40 + offset, timestamp, error_class,
                        f"{error_class} at {offset}", 1, agent)
    headers = dlq_headers(letter, [("trace", b"t"), ("redrive.id", b"older")])
    record = SimpleNamespace(partition=1, offset=offset, timestamp=timestamp, key=b"acme", value=b"{}",
                             headers=headers)
    return Entry(DLQ, record, parse_dlq_headers(headers))


def test_dlq_name_accepts_the_input_topic_or_its_dlq() -> None:
    assert dlq_name("soma.training.lock.commands") == DLQ == dlq_name(DLQ)
    with pytest.raises(ArgumentError, match="not a dead-letter topic"):
        dlq_name("soma.training.lock.state")


def test_redrive_headers_drop_dlq_and_older_redrive_headers_and_say_where_from() -> None:
    entry = _entry(7, "EventTooLarge")
    headers = dict(redrive_headers(entry.record.headers, "rid", entry))
    assert not any(name.startswith("dlq.") for name in headers)
    assert headers["trace"] == b"t" and headers["redrive.id"] == b"rid"
    assert headers["redrive.dlq.topic"] == DLQ.encode() and headers["redrive.dlq.offset"] == b"7"
    assert headers["redrive.original.partition"] == b"2" and headers["redrive.original.offset"] == b"47"
    assert headers["redrive.error.class"] == b"EventTooLarge"


def test_group_by_class_counts_spans_and_redriven() -> None:
    entries = [_entry(0, "DecodeError", 500), _entry(1, "EventTooLarge", 900), _entry(2, "EventTooLarge", 300),
               _entry(3, "EventTooLarge", 700, agent="")]
    groups = group_by_class(entries, done={(DLQ, 1, 2)})
    assert [(g.error_class, g.count, g.redriven) for g in groups] == [("EventTooLarge", 3, 1), ("DecodeError", 1, 0)]
    top: dict[str, Any] = groups[0].to_json()
    assert (top["first_timestamp"], top["last_timestamp"]) == (300, 900)
    assert top["agents"] == ["locks"] and top["original_topics"] == ["soma.training.lock.commands"]
    assert top["example"] == "EventTooLarge at 1"


def test_redrive_record_reads_what_was_done_and_survives_a_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "redrive.jsonl"
    record = RedriveRecord(path)
    assert record.done == set()
    with record.open() as handle:
        handle.write(json.dumps({"dlq_topic": DLQ, "dlq_partition": 1, "dlq_offset": 5}) + "\n")
        handle.write("{half a line\n")
    again = RedriveRecord(path)
    assert again.done == {(DLQ, 1, 5)} and again.unreadable == 1
