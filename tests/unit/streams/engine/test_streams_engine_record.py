"""Record.readable_fields: what an answer to an event that failed validation can still read from it."""

from __future__ import annotations

import pytest

from streams.engine import Record


def record_of(value: bytes) -> Record[object]:
    return Record("t", 0, 7, 0, None, value, [])


def test_fields_of_a_readable_object_are_returned() -> None:
    payload = record_of(b'{"tenant": "acme", "session_id": "s1", "prompt": 5}').readable_fields("tenant", "session_id")

    assert payload == {"tenant": "acme", "session_id": "s1", "prompt": 5}


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        b'"acme"',
        b'{"session_id": "s1"}',
        b'{"tenant": "", "session_id": "s1"}',
        b'{"tenant": 42, "session_id": "s1"}',
        b'{"tenant": "acme", "session_id": null}',
        b"",
    ],
)
def test_nothing_is_read_when_a_required_field_is_missing(value: bytes) -> None:
    assert record_of(value).readable_fields("tenant", "session_id") is None
