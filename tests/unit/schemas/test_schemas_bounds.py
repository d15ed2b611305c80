"""The bounds themselves: the edge value passes and encodes, one step past it is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    EventValidationError,
    LockCommand,
    LockState,
    SchemaError,
    TurnEvent,
    UsageEvent,
    UsageReport,
    decode_event,
    encode_event,
    to_json,
)
from schemas import bounds as b
from schemas.codec import validation_reason

EventFactory = Callable[..., Envelope]


def _round_trips(event: Envelope) -> None:
    assert decode_event(encode_event(event), type(event)) == event
    assert decode_event(to_json(event), type(event)) == event


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, b.TIMESTAMP_MIN),
        ("1970-01-01T00:00:00Z", b.TIMESTAMP_MIN),
        ("1970-01-01T01:00:00+01:00", b.TIMESTAMP_MIN),
        ("1969-12-31T23:00:00-01:00", b.TIMESTAMP_MIN),
        (7_258_118_399_999, b.TIMESTAMP_MAX - timedelta(milliseconds=1)),
        ("2199-12-31T23:59:59.999999Z", b.TIMESTAMP_MAX - timedelta(milliseconds=1)),
        ("2200-01-01T00:59:59.999+01:00", b.TIMESTAMP_MAX - timedelta(milliseconds=1)),
        (datetime(2199, 12, 31, 23, 59, 59, 999999), b.TIMESTAMP_MAX - timedelta(milliseconds=1)),
    ],
)
def test_timestamps_at_the_edges_of_the_range_pass_and_round_trip(
    given: Any, expected: datetime, lock_state_factory: Callable[..., LockState]
) -> None:
    state = lock_state_factory(occurred_at=given, acquired_at=given, expires_at=given)
    assert state.occurred_at == state.acquired_at == state.expires_at == expected
    _round_trips(state)


@pytest.mark.parametrize(
    "given",
    [
        -1,
        7_258_118_400_000,
        "1969-12-31T23:59:59.999Z",
        "2200-01-01T00:00:00Z",
        "2200-01-01T01:00:00+01:00",
        "1970-01-01T00:59:59.999+01:00",
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2200, 1, 1),
        "2024-05-01T12:00:00Z" + " " * 100,
    ],
    ids=repr,
)
def test_timestamps_just_outside_the_range_are_refused(given: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        LockCommand(tenant="t", action="status", user="u", occurred_at=given)
    assert caught.value.errors()[0]["loc"] == ("occurred_at",)


def test_the_range_leaves_room_for_windows_and_ttls() -> None:
    """What the agents add to a valid timestamp stays far from datetime's and Avro's limits."""
    latest = b.TIMESTAMP_MAX - timedelta(milliseconds=1)
    assert (latest + timedelta(days=31 + 7) + timedelta(seconds=b.TTL_MAX_SECONDS)).year < 9999
    assert (b.TIMESTAMP_MIN - timedelta(days=31)).year > 1
    assert int(latest.timestamp() * 1000) + b.TTL_MAX_SECONDS * 1000 < 2**63


# (model, base fields, field, largest valid value, smallest valid value)
NUMBER_EDGES: list[tuple[type[Envelope], dict[str, Any], str, Any, Any]] = [
    (LockCommand, {"action": "enable", "user": "u"}, "ttl_seconds", b.TTL_MAX_SECONDS, 1),
    (LockCommand, {"action": "enable", "user": "u"}, "schema_version", b.SCHEMA_VERSION_MAX, 1),
    (LockState, {"status": "active"}, "fencing_token", b.FENCING_TOKEN_MAX, 0),
    (UsageEvent, {"provider": "p", "model": "m", "kind": "chat"}, "input_tokens", b.COUNT_MAX, 0),
    (UsageEvent, {"provider": "p", "model": "m", "kind": "chat"}, "output_tokens", b.COUNT_MAX, 0),
    (UsageEvent, {"provider": "p", "model": "m", "kind": "chat"}, "cached_tokens", b.COUNT_MAX, 0),
    (UsageEvent, {"provider": "p", "model": "m", "kind": "chat"}, "cost_usd", b.COST_MAX_USD, 0.0),
    (UsageEvent, {"provider": "p", "model": "m", "kind": "chat"}, "latency_ms", b.DURATION_MAX_MS, 0.0),
    (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "chunk"}, "seq", b.COUNT_MAX, 0),
    (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "completed"}, "ttft_ms", b.DURATION_MAX_MS, 0.0),
    (EmbeddingJob, {"job": "search", "collection": "c", "query": "q"}, "top_k", b.TOP_K_MAX, 1),
    (EmbeddingResult, {"job_id": "j", "status": "ok"}, "upserted", b.COUNT_MAX, 0),
    (UsageReport, {"report": "rollup"}, "input_tokens", b.SUM_MAX, 0),
    (UsageReport, {"report": "rollup"}, "events", b.SUM_MAX, 0),
    (UsageReport, {"report": "forecast"}, "history_points", b.COUNT_MAX, 0),
]


@pytest.mark.parametrize(
    ("model", "fields", "name", "largest", "smallest"),
    NUMBER_EDGES,
    ids=[f"{m.__name__}.{n}" for m, _, n, _, _ in NUMBER_EDGES],
)
def test_numbers_at_their_bounds_pass_and_one_step_past_is_refused(
    model: type[Envelope], fields: dict[str, Any], name: str, largest: Any, smallest: Any
) -> None:
    for value in (largest, smallest):
        _round_trips(model(tenant="t", **fields, **{name: value}))
    step = 1 if isinstance(largest, int) else largest * 1e-9
    for value in (largest + step, smallest - (1 if isinstance(smallest, int) else 1e-9)):
        with pytest.raises(ValidationError) as caught:
            model(tenant="t", **fields, **{name: value})
        assert caught.value.errors()[0]["loc"] == (name,)


def test_turn_numbers_at_their_bounds() -> None:
    turn = {"tenant": "t", "session_id": "s", "user": "u", "prompt": "p"}
    edge = {"max_tokens": b.MAX_TOKENS_MAX, "temperature": 2.0, "memory": {"collection": "c", "top_k": 50}}
    _round_trips(decode_event(json.dumps({**turn, **edge}).encode(), ConversationTurn))
    for bad in ({"max_tokens": b.MAX_TOKENS_MAX + 1}, {"temperature": 2.0000001},
                {"memory": {"collection": "c", "top_k": 51}}):
        with pytest.raises(EventValidationError):
            decode_event(json.dumps({**turn, **bad}).encode(), ConversationTurn)


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_fields_at_their_bounds_pass_and_past_them_are_refused() -> None:
    def job(metadata: dict[str, Any]) -> EmbeddingJob:
        return EmbeddingJob(tenant="t", job="upsert", collection="c",
                            documents=[{"id": "d", "text": "x", "metadata": metadata}])

    _round_trips(job(_deep(b.JSON_MAX_DEPTH)))
    _round_trips(job({"i": b.JSON_INT_MAX, "j": -b.JSON_INT_MAX, "f": 1.7976931348623157e308}))
    filler = b.JSON_MAX_BYTES - len('{"s":""}')
    _round_trips(job({"s": "x" * filler}))
    for bad in (
        _deep(b.JSON_MAX_DEPTH + 1),
        {"i": b.JSON_INT_MAX + 1},
        {"s": "x" * (filler + 1)},
        {"s": "\x01" * (filler // 6 + 1)},  # written as \\u0001: six bytes each
        {"f": float("nan")},
        {"t": (1, 2)},
        {"d": datetime(2024, 1, 1)},
        {1: "int key"},
    ):
        with pytest.raises(ValidationError) as caught:
            job(bad)
        assert caught.value.errors()[0]["loc"][:3] == ("documents", 0, "metadata")


@pytest.mark.parametrize(
    ("model", "fields", "name", "limit"),
    [
        (LockCommand, {"action": "status", "user": "u"}, "reason", b.REASON_MAX_CHARS),
        (LockCommand, {"action": "status"}, "user", b.NAME_MAX_CHARS),
        (UsageEvent, {"provider": "p", "kind": "chat"}, "model", b.NAME_MAX_CHARS),
        (EmbeddingJob, {"job": "delete", "collection": "c"}, "doc_ids", b.DOC_IDS_MAX),
        (LockCommand, {"action": "status", "user": "u"}, "roles", b.ROLES_MAX),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_strings_and_lists_at_their_bound_pass(
    model: type[Envelope], fields: dict[str, Any], name: str, limit: int
) -> None:
    value: Any = ["d"] * limit if name in ("doc_ids", "roles") else "é" * limit
    _round_trips(model(tenant="t", **fields, **{name: value}))
    longer: Any = ["d"] * (limit + 1) if name in ("doc_ids", "roles") else "é" * (limit + 1)
    with pytest.raises(ValidationError):
        model(tenant="t", **fields, **{name: longer})


def test_long_diagnostics_on_answers_are_cut_not_refused() -> None:
    long = "boom " * 10_000
    failed = TurnEvent(tenant="t", session_id="s", turn_id="x", type="failed", error=long)
    assert failed.error is not None
    assert len(failed.error) == b.ERROR_MAX_CHARS and failed.error.endswith("…")
    _round_trips(failed)
    state = LockState(tenant="t", status="rejected", detail=long)
    assert len(state.detail) == b.ERROR_MAX_CHARS
    result = EmbeddingResult(tenant="t", job_id="j", status="failed", error=long)
    assert result.error is not None and len(result.error) == b.ERROR_MAX_CHARS


def test_validators_raise_value_errors_only() -> None:
    """pydantic reports ValueError as a field error; anything else would escape as a crash."""
    for stamp in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 10**400, 1e308):
        with pytest.raises(ValidationError):
            LockCommand(tenant="t", action="status", user="u", occurred_at=stamp)
    with pytest.raises(ValueError, match="nested deeper"):
        b.check_json_object({"a": _deep(5_000)})
    with pytest.raises(ValueError, match="outside"):
        b.check_json_object({"a": 10**5000})


def test_an_unexpected_exception_in_validation_becomes_a_schema_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-resort catch: a validator bug dead-letters the record instead of crashing the agent."""

    def explode(cls: type[LockCommand], obj: Any) -> LockCommand:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(LockCommand, "model_validate", classmethod(explode))
    data = b'{"tenant": "t", "action": "status", "user": "u"}'
    with pytest.raises(EventValidationError, match="LockCommand: OverflowError while validating: date value"):
        decode_event(data, LockCommand)
    with pytest.raises(EventValidationError, match="OverflowError"):
        decode_event(encode_event(LockCommand.model_construct(**_lock_fields())), LockCommand)


def test_an_unexpected_exception_in_decoding_becomes_a_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas.codec as codec

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(codec.json, "loads", no_memory)
    with pytest.raises(SchemaError, match="MemoryError"):
        decode_event(b'{"tenant": "t"}', LockCommand)
    monkeypatch.undo()
    monkeypatch.setattr(codec, "_read_plan", no_memory)
    codec._read_plans.clear()
    data = encode_event(LockCommand(tenant="t", action="status", user="u"))
    with pytest.raises(SchemaError, match="MemoryError"):
        decode_event(data, LockCommand)
    with pytest.raises(SchemaError, match="MemoryError"):
        codec.decode_any(data)


def _lock_fields() -> dict[str, Any]:
    return LockCommand(tenant="t", action="status", user="u").model_dump()


def test_validation_reason_lists_at_most_ten_problems_and_shows_inputs_short() -> None:
    with pytest.raises(ValidationError) as caught:
        LockCommand.model_validate({"tenant": "t", "action": "x" * 10**6, **{f"f{i}": 1 for i in range(30)}})
    reason = validation_reason("LockCommand", caught.value)
    assert "action: Input should be" in reason
    assert "(got 'xxxxxxxx" in reason and "...)" in reason
    assert reason.endswith("and 22 more problems")
    assert len(reason) < 1000


def test_the_readme_states_the_bounds_of_the_code() -> None:
    """README.md's *Bounds* list is the user's contract: each figure must be the code's."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("**Bounds**") : readme.index("### Training locks")]
    # (the code's bound, the figure README.md gives, how README.md spells it)
    stated: list[tuple[Any, Any, str]] = [
        (b.TIMESTAMP_MIN, datetime(1970, 1, 1, tzinfo=UTC), "`1970-01-01T00:00:00Z` ≤ t"),
        (b.TIMESTAMP_MAX, datetime(2200, 1, 1, tzinfo=UTC), "t < `2200-01-01T00:00:00Z`"),
        ((b.TIMESTAMP_MAX - b.TIMESTAMP_MIN) // timedelta(milliseconds=1), 7_258_118_400_000, "ms < `7258118400000`"),
        (b.COUNT_MAX, 10**9, "`history_points` 0…10⁹"),
        (b.COST_MAX_USD, 1_000_000, "`cost_usd` 0…1,000,000"),
        (b.DURATION_MAX_MS, 604_800_000, "`ttft_ms` 0…604,800,000 (7 days)"),
        (b.SUM_MAX, 2**63 - 1, "(tokens, `events`) 0…2⁶³−1"),
        (b.TTL_MAX_SECONDS, 31_622_400, "`ttl_seconds` 1…31,622,400 (366 days)"),
        (b.MAX_TOKENS_MAX, 1_000_000, "`max_tokens` 1…1,000,000"),
        (b.TOP_K_MAX, 1000, "`top_k` 1…1000"),
        (b.FENCING_TOKEN_MAX, 2**53 - 1, "`fencing_token` 0…2⁵³−1"),
        (b.SCHEMA_VERSION_MAX, 1000, "`schema_version` 1…1000"),
        (b.NAME_MAX_CHARS, 256, "`correlation_id`, …) ≤ 256"),
        (b.DOC_ID_MAX_CHARS, 1024, "document ids ≤ 1024"),
        (b.TEXT_MAX_CHARS, 1_000_000, "and hit `text` ≤ 1,000,000"),
        (b.ANSWER_MAX_CHARS, 10_000_000, "`text`/`delta` ≤ 10,000,000"),
        (b.REASON_MAX_CHARS, 10_000, "lock `reason` ≤ 10,000"),
        (b.ERROR_MAX_CHARS, 10_000, "is cut to 10,000"),
        (b.ROLES_MAX, 100, "`roles` ≤ 100"),
        (b.DOCUMENTS_MAX, 1000, "`documents` ≤ 1000"),
        (b.DOC_IDS_MAX, 10_000, "`doc_ids` ≤ 10,000"),
        (b.HITS_MAX, 1000, "`hits`/`sources` ≤ 1000"),
        (b.SOURCES_MAX, 1000, "`hits`/`sources` ≤ 1000"),
        (b.JSON_MAX_DEPTH, 32, "nested at most 32 deep"),
        (b.JSON_MAX_BYTES, 65_536, "at most 65,536 bytes"),
        (b.JSON_INT_MAX, 2**63 - 1, "integers within ±(2⁶³−1)"),
    ]
    for constant, figure, text in stated:
        assert constant == figure, f"a bound changed to {constant}: update README.md's Bounds and this test"
        assert text in section, f"README.md Bounds: {text!r} missing"
