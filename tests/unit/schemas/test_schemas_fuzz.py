"""Property tests of the decoders and the contracts' bounds.

1. Any bytes, any JSON value, any mutation of a valid Avro frame: decoding raises only SchemaError.
2. Any event that validates encodes with ``encode_event`` and comes back equal, through Avro and JSON.

Field values are drawn from each model's own annotations, biased to the edges (the bounds and just
past them, the wire types' limits, inf/NaN, lone surrogates, timestamps near year 1 / 1970 / 2200 /
9999 with offsets), so every field of every model is tried near where it breaks.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import (
    SUBJECTS,
    ConversationTurn,
    EmbeddingJob,
    Envelope,
    LockCommand,
    SchemaError,
    UsageEvent,
    decode_any,
    decode_event,
    encode_event,
    to_json,
    to_json_dict,
)
from schemas.codec import read_json_object

EventFactory = Callable[..., Envelope]
ALL_MODELS = list(SUBJECTS)
INPUT_MODELS = [LockCommand, ConversationTurn, EmbeddingJob, UsageEvent]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- values near every edge -------------------------------------------------------------------

EDGE_INTS = [
    0, 1, -1, 5, 50, 51, 128, 256, 257, 1000, 1001, 10_000, 10_001, 1_000_000, 1_000_001,
    366 * 86_400, 366 * 86_400 + 1, 10**9, 10**9 + 1, 2**31 - 1, 2**31, 2**53 - 1, 2**53,
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**20, -(10**20), 10**30,
]
EDGE_FLOATS = [
    0.0, -0.0, 0.5, 1.0, 2.0, 2.0000001, -1e-300, 1e6, 1e6 + 1, 6.048e8, 6.048e8 + 1, 1e300,
    1.7976931348623157e308, float("inf"), float("-inf"), float("nan"),
]
ints = st.one_of(st.integers(-3, 2000), st.sampled_from(EDGE_INTS), st.integers())
floats = st.one_of(st.floats(), st.sampled_from(EDGE_FLOATS))
# Lone surrogates included: JSON producers can send them as \udxxx escapes.
chars = st.characters(codec=None, exclude_categories=())
texts = st.one_of(
    st.text(alphabet=chars, max_size=12),
    st.text(alphabet="ab-_.0", min_size=1, max_size=8),
    st.sampled_from([1, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 9_999, 10_000, 10_001]).map(
        lambda n: "é" * n
    ),
)
OFFSETS = st.one_of(
    st.none(),
    st.just(UTC),
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)).map(
        timezone
    ),
)
EDGE_DATES = [
    datetime(1, 1, 1),
    datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime(1970, 1, 1),
    datetime(1970, 1, 1, 0, 59, 59),
    datetime(2199, 12, 31, 23, 59, 59, 999999),
    datetime(2200, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
]
datetimes = st.one_of(
    st.builds(lambda d, tz: d.replace(tzinfo=tz), st.sampled_from(EDGE_DATES), OFFSETS),
    st.datetimes(timezones=OFFSETS),
)
timestamps = st.one_of(
    datetimes,
    datetimes.map(lambda d: d.isoformat()),
    st.sampled_from([0, -1, 7_258_118_400_000, 7_258_118_399_999, 10**20, -(10**20)]),
    ints,
    floats,
    texts,
)
json_leaves = st.one_of(st.none(), st.booleans(), ints, floats, st.text(alphabet=chars, max_size=8))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet=chars, max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value} if depth % 2 else [value]
    return value


json_objects = st.one_of(
    st.dictionaries(st.text(alphabet=chars, max_size=6), json_values, max_size=5),
    st.sampled_from([31, 32, 33, 40]).map(lambda d: {"d": _deep(d)}),
    st.sampled_from([10_900, 10_930, 11_000]).map(lambda n: {"big": "\x01" * n}),  # ~65,536 bytes as JSON
)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Values for a field of this annotation: mostly of its type, sometimes of another."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return strategy_for(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in get_args(annotation)))
    if origin is Literal:
        return st.one_of(st.sampled_from(get_args(annotation)), texts)
    if origin is list:
        item = strategy_for(get_args(annotation)[0])
        return st.one_of(
            st.lists(item, max_size=3),
            st.sampled_from([100, 101, 1000, 1001]).flatmap(lambda n: item.map(lambda v: [v] * n)),
        )
    if origin is dict:
        return json_objects
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_dicts(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return ints
    if annotation is float:
        return st.one_of(floats, ints)
    if annotation is str:
        return texts
    if annotation is datetime:
        return timestamps
    raise AssertionError(f"no strategy for {annotation!r}")


def model_dicts(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts for ``model``: each field left out (default) or drawn near its edges."""
    fields = {name: strategy_for(info.annotation) for name, info in model.model_fields.items()}
    if issubclass(model, Envelope):
        fields["tenant"] = st.one_of(st.just("acme"), texts)
        fields["event_id"] = st.one_of(st.uuids().map(str), texts)
    return st.fixed_dictionaries({}, optional=fields)


def near_bounds(data: st.DataObject, model: type[BaseModel], sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` with up to four fields replaced by values drawn near their edges."""
    names = data.draw(st.lists(st.sampled_from(sorted(model.model_fields)), max_size=4, unique=True))
    for name in names:
        sample[name] = data.draw(strategy_for(model.model_fields[name].annotation))
    return sample


def _check_round_trip(event: Envelope) -> None:
    """A validated event always encodes, and decodes back to itself through Avro and through JSON."""
    model = type(event)
    data = encode_event(event)
    assert decode_event(data, model) == event
    assert decode_any(data) == event
    assert decode_event(to_json(event), model) == event


def _decode_only_schema_errors(data: bytes, model: type[Envelope]) -> None:
    try:
        decoded = decode_event(data, model)
    except SchemaError as exc:
        assert exc.reason
        assert len(exc.reason) <= 2000
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    _check_round_trip(decoded)


# --- 1. only SchemaError escapes --------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_schema_errors(model: type[Envelope], data: bytes) -> None:
    _decode_only_schema_errors(data, model)
    for reader in (decode_any, read_json_object):
        try:
            reader(data)
        except SchemaError:
            pass


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(body=st.binary(max_size=300), schema_id=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2**32 - 1]))
def test_any_body_behind_a_valid_header_raises_only_schema_errors(
    model: type[Envelope], body: bytes, schema_id: int
) -> None:
    _decode_only_schema_errors(b"\x00" + schema_id.to_bytes(4, "big") + body, model)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(value=json_values)
def test_arbitrary_json_values_raise_only_schema_errors(model: type[Envelope], value: Any) -> None:
    _decode_only_schema_errors(json.dumps(value).encode(), model)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(st.data())
def test_json_events_near_every_bound_raise_only_schema_errors(
    model: type[Envelope], event_factory: EventFactory, data: st.DataObject
) -> None:
    """A valid sample as JSON with a few fields replaced by edge values (or the whole thing drawn)."""
    if data.draw(st.booleans()):
        fields = data.draw(model_dicts(model))
    else:
        fields = near_bounds(data, model, to_json_dict(event_factory(model)))
    text = json.dumps(fields, default=lambda v: v.isoformat()).replace("Infinity", "1e309")
    _decode_only_schema_errors(text.encode(), model)


def _mutations(frame: bytes) -> st.SearchStrategy[bytes]:
    positions = st.integers(0, len(frame) - 1)
    return st.one_of(
        st.tuples(positions, st.integers(0, 255)).map(lambda p: frame[: p[0]] + bytes([p[1]]) + frame[p[0] + 1 :]),
        st.tuples(positions, st.binary(min_size=1, max_size=9)).map(lambda p: frame[: p[0]] + p[1] + frame[p[0] :]),
        st.tuples(positions, st.integers(1, 9)).map(lambda p: frame[: p[0]] + frame[p[0] + p[1] :]),
        st.tuples(positions, st.integers(0, 7)).map(
            lambda p: frame[: p[0]] + bytes([frame[p[0]] ^ (1 << p[1])]) + frame[p[0] + 1 :]
        ),
        positions.map(lambda p: frame[:p]),
    )


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(st.data())
def test_mutated_avro_frames_raise_only_schema_errors(
    model: type[Envelope], event_factory: EventFactory, data: st.DataObject
) -> None:
    frame = encode_event(event_factory(model))
    mutated = data.draw(_mutations(frame))
    for _ in range(data.draw(st.integers(0, 3))):
        if mutated:
            mutated = data.draw(_mutations(mutated))
    _decode_only_schema_errors(mutated, model)
    try:
        decode_any(mutated)
    except SchemaError:
        pass


# --- 2. what validates, encodes and round-trips ------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@FUZZ
@given(st.data())
def test_every_valid_event_encodes_and_round_trips(
    model: type[Envelope], event_factory: EventFactory, data: st.DataObject
) -> None:
    """Fields of a valid sample replaced by edge values: refused, or encodable and stable.

    Most draws stay valid (a few fields change at a time), so the round trip is exercised near
    every bound and not only on the samples.
    """
    sample = near_bounds(data, model, event_factory(model).model_dump())
    try:
        valid = model.model_validate(sample)
    except ValidationError:
        event("refused")
        return
    event("valid")
    _check_round_trip(valid)
    _check_round_trip(model.model_validate_json(to_json(valid)))
