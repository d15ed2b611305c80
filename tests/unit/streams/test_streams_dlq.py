"""Dead-letter headers: written by dlq_headers, read back by parse_dlq_headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.dlq import DeadLetter, dlq_headers, parse_dlq_headers

#: The header names ARCHITECTURE.md makes a public contract.
CONTRACT_HEADERS = {
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.original.timestamp",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.attempts",
}


@pytest.fixture
def dead_letter_factory() -> Callable[..., DeadLetter]:
    def make(**overrides: Any) -> DeadLetter:
        fields: dict[str, Any] = {
            "topic": "soma.training.lock.commands",
            "partition": 3,
            "offset": 1_234_567,
            "timestamp": 1_714_564_800_123,
            "error_class": "SchemaError",
            "error_message": "field 'action': Input should be 'enable', 'disable', 'extend' or 'status'",
            "attempts": 4,
            "agent": "locks",
        }
        fields.update(overrides)
        return DeadLetter(**fields)

    return make


def test_round_trip(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    letter = dead_letter_factory()

    assert parse_dlq_headers(dlq_headers(letter)) == letter


def test_round_trip_from_a_tuple_of_headers(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    letter = dead_letter_factory(error_message="naïve ✓ ünïcode")

    assert parse_dlq_headers(tuple(dlq_headers(letter))) == letter


def test_contract_headers_are_present_with_text_values(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    headers = dict(dlq_headers(dead_letter_factory()))

    assert CONTRACT_HEADERS <= set(headers)
    assert headers["dlq.original.topic"] == b"soma.training.lock.commands"
    assert headers["dlq.original.partition"] == b"3"
    assert headers["dlq.original.offset"] == b"1234567"
    assert headers["dlq.original.timestamp"] == b"1714564800123"
    assert headers["dlq.error.class"] == b"SchemaError"
    assert headers["dlq.attempts"] == b"4"
    assert all(isinstance(value, bytes) for value in headers.values())


def test_stale_dlq_headers_are_replaced_and_others_kept(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    first = dead_letter_factory(topic="soma.usage.events", attempts=1, error_class="TimeoutError")
    original = [("traceparent", b"00-abc-01"), *dlq_headers(first), ("x-source", b"bridge")]
    second = dead_letter_factory(attempts=3, error_class="ValueError")

    headers = dlq_headers(second, original)

    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    # Non-dlq headers survive, in their order, ahead of the new dead-letter headers.
    assert headers[:2] == [("traceparent", b"00-abc-01"), ("x-source", b"bridge")]
    assert parse_dlq_headers(headers) == second
    assert dict(headers)["dlq.error.class"] == b"ValueError"
    assert dict(headers)["dlq.original.topic"] == b"soma.training.lock.commands"


def test_no_original_headers(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    letter = dead_letter_factory()

    assert dlq_headers(letter, None) == dlq_headers(letter, [])
    assert {name for name, _ in dlq_headers(letter)} >= CONTRACT_HEADERS


def test_long_message_is_truncated(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    letter = dead_letter_factory(error_message="x" * 100_000)

    parsed = parse_dlq_headers(dlq_headers(letter))

    assert 0 < len(parsed.error_message) < 100_000
    assert len(parsed.error_message) <= 4_000
    assert letter.error_message.startswith(parsed.error_message)
    # The rest of the letter is untouched by the truncation.
    assert replace(parsed, error_message=letter.error_message) == letter


def test_short_message_is_not_truncated(dead_letter_factory: Callable[..., DeadLetter]) -> None:
    letter = dead_letter_factory(error_message="y" * 3_000)

    assert parse_dlq_headers(dlq_headers(letter)).error_message == letter.error_message


def test_missing_headers_parse_to_defaults() -> None:
    parsed = parse_dlq_headers([("unrelated", b"1")])

    assert parsed == DeadLetter(topic="", partition=-1, offset=-1, timestamp=0, error_class="",
                                error_message="", attempts=1, agent="")


_letters = st.builds(
    DeadLetter,
    topic=st.from_regex(r"[a-z][a-z0-9._-]{0,60}", fullmatch=True),
    partition=st.integers(min_value=0, max_value=10_000),
    offset=st.integers(min_value=0, max_value=2**63 - 1),
    timestamp=st.integers(min_value=0, max_value=2**45),
    error_class=st.text(max_size=80),
    error_message=st.text(max_size=5_000),
    attempts=st.integers(min_value=1, max_value=1_000),
    agent=st.text(max_size=30),
)
_other_headers = st.lists(
    st.tuples(st.text(max_size=20).filter(lambda name: not name.startswith("dlq.")), st.binary(max_size=20)),
    max_size=5,
)


@given(letter=_letters, original=_other_headers, stale=_letters)
def test_round_trip_property(letter: DeadLetter, original: list[tuple[str, bytes]], stale: DeadLetter) -> None:
    previous = original + dlq_headers(stale)

    headers = dlq_headers(letter, previous)

    assert parse_dlq_headers(headers) == replace(letter, error_message=letter.error_message[:4_000])
    assert [h for h in headers if not h[0].startswith("dlq.")] == original


def test_malformed_numbers_parse_to_defaults() -> None:
    """Anyone can write to a DLQ topic: a listing must not stop on one entry with garbage headers."""
    parsed = parse_dlq_headers([("dlq.original.topic", b"t"), ("dlq.original.partition", b"x"),
                                ("dlq.original.offset", b"9" * 5000), ("dlq.original.timestamp", b"\xff"),
                                ("dlq.attempts", b"")])

    assert (parsed.topic, parsed.partition, parsed.offset, parsed.timestamp, parsed.attempts) == ("t", -1, -1, 0, 1)
