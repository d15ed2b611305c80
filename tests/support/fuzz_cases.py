"""Malformed and adversarial input records for the fuzz battery (``tests/integration/test_fuzz_inputs.py``).

Each case is the key and value bytes a plain Kafka client could put on an input topic — bytes the
project's own producer would refuse to write. Valid frames come from :func:`schemas.encode_event` and
are corrupted afterwards; Avro frames carrying out-of-contract values are written with fastavro from
the wire form of a valid event, so that building them never depends on what the models accept today
(the contracts are being tightened while these cases stay the same).

A topic is described by a :class:`Profile`: how to make a fresh valid JSON payload, which field it is
keyed by, which free-text field can be padded, and its own field-level cases.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
from aiokafka.partitioner import murmur2

from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    LockCommand,
    LockState,
    TurnEvent,
    UsageEvent,
    UsageReport,
    encode_event,
)
from schemas.registry import get_schema_table, subject_for_model
from streams.catalog import TopicSpec

__all__ = [
    "Case",
    "Profile",
    "Raw",
    "avro_with",
    "build_cases",
    "embedding_avro_cases",
    "embedding_profile",
    "json_payload",
    "lock_avro_cases",
    "lock_profile",
    "partition_for",
    "turn_avro_cases",
    "turn_profile",
    "unique_ids",
    "usage_avro_cases",
    "usage_profile",
]

BOM = b"\xef\xbb\xbf"


@dataclass
class Case:
    """One record to send, and where the broker put it."""

    name: str
    key: bytes | None
    value: bytes | None
    #: The id an answer to this record would name (its JSON/Avro ``event_id``), when it has one.
    event_id: str | None = None
    #: The tenant (or session) the payload names, when it names one as a string.
    subject: str | None = None
    #: Send to this partition instead of the key's (a null-keyed record on a chosen partition).
    partition: int | None = None
    #: False for a record a correct agent may also process normally (any answer accounts for it).
    must_refuse: bool = True
    sent_partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Raw:
    """A JSON value written as this literal text (``1e309``, ``NaN``, a 10,000-digit integer ...)."""

    text: str


def json_payload(payload: dict[str, Any]) -> bytes:
    """``payload`` as UTF-8 JSON, with every :class:`Raw` value written as its literal text."""
    literals: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            token = f"@@raw{len(literals)}@@"
            literals[token] = value.text
            return token
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(payload))
    for token, literal in literals.items():
        text = text.replace(json.dumps(token), literal)
    return text.encode("utf-8", "surrogatepass")


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default (murmur2) partitioner picks for ``key``, as aiokafka and Java do."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- Avro frames -----------------------------------------------------------------------------------------


def _entry(model: type[Envelope]) -> Any:
    return get_schema_table().latest(subject_for_model(model))


def _header(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big")


def wire_record(event: Envelope) -> dict[str, Any]:
    """The event as fastavro reads it back from the project's own frame (json fields stay strings)."""
    entry = _entry(type(event))
    record = fastavro.schemaless_reader(io.BytesIO(encode_event(event)[5:]), entry.parsed)
    assert isinstance(record, dict)
    return record


def avro_with(event: Envelope, schema: dict[str, Any] | None = None, **changes: Any) -> bytes:
    """A frame under the event's real schema id whose body carries ``changes`` (written without validation).

    ``schema`` (a raw schema dict) writes the body with a different schema than the id announces, to
    produce bytes the real schema cannot read (an enum index or union branch it does not have).
    """
    entry = _entry(type(event))
    record = wire_record(event)
    record.update(changes)
    parsed = fastavro.parse_schema(schema if schema is not None else copy.deepcopy(entry.raw))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return _header(entry.schema_id) + out.getvalue()


def _with_extra_union_branch(model: type[Envelope], field_name: str, branch: str) -> dict[str, Any]:
    raw = copy.deepcopy(_entry(model).raw)
    for spec in raw["fields"]:
        if spec["name"] == field_name:
            spec["type"] = [*spec["type"], branch]
    return raw


def _varint(value: int) -> bytes:
    """Avro's zig-zag varint of a (possibly huge) long."""
    n = (value << 1) ^ (value >> 127)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _flip(data: bytes, index: int, mask: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= mask
    return bytes(flipped)


# -- topic profiles ----------------------------------------------------------------------------------------


@dataclass
class Profile:
    """What the battery needs to know about one input topic."""

    spec: TopicSpec
    model: type[Envelope]
    #: The field the topic is keyed by (tenant, or session_id for turns).
    keyed: str
    #: A fresh valid payload (new event id; fresh tenant/session where the topic's answers need one).
    valid: Callable[[], dict[str, Any]]
    #: A free-text field that may be long, to make an otherwise valid event too large.
    text_field: str
    #: Valid events of other types, whose frames (other schema ids) are sent on this topic.
    strangers: Callable[[], list[Envelope]]
    #: The topic's own field-level cases: (name, changes to a valid payload).
    specific: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Names of cases a correct agent may refuse or process normally (adversarial, not out of contract).
    may_succeed: frozenset[str] = frozenset()

    def key_of(self, payload: dict[str, Any]) -> bytes:
        value = payload.get(self.keyed)
        return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b"fuzz-unkeyed"


def _event_id(payload: dict[str, Any]) -> str | None:
    value = payload.get("event_id")
    return value if isinstance(value, str) else None


def _subject(profile: Profile, payload: dict[str, Any]) -> str | None:
    value = payload.get(profile.keyed)
    return value if isinstance(value, str) else None


def build_cases(profile: Profile, max_event_bytes: int) -> list[Case]:
    """Every case of the battery for one input topic (generic ones first, then the topic's own)."""
    cases: list[Case] = []

    def add_json(name: str, changes: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
                 key: bytes | str | None = "keyed") -> dict[str, Any]:
        payload = {**profile.valid(), **(changes or {})}
        for name_ in drop:
            payload.pop(name_, None)
        raw_key = profile.key_of(payload) if key == "keyed" else key
        assert not isinstance(raw_key, str)
        cases.append(Case(name, raw_key, json_payload(payload), _event_id(payload), _subject(profile, payload)))
        return payload

    def add_bytes(name: str, value: bytes | None, payload: dict[str, Any] | None = None,
                  key: bytes | str | None = "keyed") -> None:
        base = payload if payload is not None else profile.valid()
        raw_key = profile.key_of(base) if key == "keyed" else key
        assert not isinstance(raw_key, str)
        cases.append(Case(name, raw_key, value, _event_id(base), _subject(profile, base)))

    def valid_event() -> tuple[Envelope, dict[str, Any]]:
        payload = profile.valid()
        return profile.model.model_validate(payload), payload

    # Dates out of range, either way, as text and as epoch milliseconds.
    add_json("occurred_at 0001-01-01T00:00:00+01:00 (before year 1 in UTC)",
             {"occurred_at": "0001-01-01T00:00:00+01:00"})
    add_json("occurred_at 9999-12-31T23:59:59-01:00 (after year 9999 in UTC)",
             {"occurred_at": "9999-12-31T23:59:59-01:00"})
    add_json("occurred_at epoch ms 10**20", {"occurred_at": 10**20})
    add_json("occurred_at epoch ms -10**20", {"occurred_at": -(10**20)})
    add_json("occurred_at epoch ms 1e309 (inf)", {"occurred_at": Raw("1e309")})
    add_json("occurred_at epoch ms 2**63", {"occurred_at": 2**63})
    add_json("occurred_at NaN literal", {"occurred_at": Raw("NaN")})
    add_json("occurred_at not a date", {"occurred_at": "the day after tomorrow"})
    add_json("occurred_at wrong type (bool)", {"occurred_at": True})

    # Numbers beyond the wire types.
    add_json("schema_version 2**31 (over Avro int)", {"schema_version": 2**31})
    add_json("schema_version 10**30", {"schema_version": 10**30})
    add_json("schema_version 0", {"schema_version": 0})
    add_json("schema_version -1e309 (-inf)", {"schema_version": Raw("-1e309")})
    add_json("integer literal of 10,000 digits", {"schema_version": Raw("9" * 10_000)})

    # Structure and size.
    deep = json_payload({**profile.valid(), "nested": Raw("@@deep@@")})
    add_bytes("array nested 100,000 deep", deep.replace(b"@@deep@@", b"[" * 100_000 + b"]" * 100_000))
    add_json("objects nested 900 deep in an unknown field", {"nested": _nested(900)})
    add_json("5,000 unknown fields", {f"field{i}": i for i in range(5000)})
    padded = profile.valid()
    filler = max_event_bytes - len(json_payload({**padded, "padding": ""}))
    add_bytes(f"exactly SOMA_MAX_EVENT_BYTES ({max_event_bytes}) with an unknown field",
              json_payload({**padded, "padding": "x" * filler}), padded)
    big = profile.valid()
    add_bytes("SOMA_MAX_EVENT_BYTES + 1, otherwise valid", _padded_to(big, profile.text_field, max_event_bytes + 1),
              big)
    add_bytes("4 x SOMA_MAX_EVENT_BYTES, otherwise valid", _padded_to(big, profile.text_field, 4 * max_event_bytes),
              big)

    # Text encodings.
    payload = profile.valid()
    marked = json_payload({**payload, profile.text_field: "@@bad@@"})
    add_bytes("invalid UTF-8 (\\xff\\xfe) in a string", marked.replace(b"@@bad@@", b"\xff\xfe"), payload)
    add_bytes("UTF-8-encoded surrogate (\\xed\\xa0\\x80) in a string", marked.replace(b"@@bad@@", b"\xed\xa0\x80"),
              payload)
    add_bytes("overlong UTF-8 (\\xc0\\xaf) in a string", marked.replace(b"@@bad@@", b"\xc0\xaf"), payload)
    add_json(f"lone surrogate escape in {profile.text_field}", {profile.text_field: Raw('"a\\ud800b"')})
    add_json("lone surrogate escape in tenant", {"tenant": Raw('"t\\udc00"')})
    add_json("lone low surrogate escape in event_id", {"event_id": Raw('"\\udfff"')})
    add_json("NUL character in tenant", {"tenant": "t\u0000x"})

    # Confluent framing.
    event, payload = valid_event()
    frame = encode_event(event)
    add_bytes("Confluent frame with unknown schema id 2**31-1", _header(2**31 - 1) + frame[5:], payload)
    add_bytes("Confluent frame with schema id 0", _header(0) + frame[5:], payload)
    for stranger in profile.strangers():
        add_bytes(f"Confluent frame of another event type ({type(stranger).__name__})", encode_event(stranger),
                  payload)
    add_bytes("known schema id, garbage body", frame[:5] + b"\xde\xad\xbe\xef garbage \xff\xff\xff", payload)
    event, payload = valid_event()
    frame = encode_event(event)
    add_bytes("known schema id, truncated body", frame[:-3], payload)
    add_bytes("known schema id, header only", frame[:5], payload)
    add_bytes("Confluent header cut short", frame[:3], payload)
    add_bytes("magic byte 1", b"\x01" + frame[1:], payload)
    add_bytes("valid frame + trailing bytes", frame + b"\x00\x01\x02", payload)
    event, payload = valid_event()
    frame = encode_event(event)
    tenant_at = frame.index(event.tenant.encode(), 5 + 37)
    add_bytes("bit flip: high bit of the tenant's first byte (invalid UTF-8)", _flip(frame, tenant_at, 0x80), payload)
    add_bytes("bit flip: event_id length varint (negative length)", _flip(frame, 5, 0x01), payload)
    add_bytes("event_id length varint 2**60", frame[:5] + _varint(2**60) + frame[6:], payload)
    event, payload = valid_event()
    add_bytes("union branch index out of range (correlation_id)",
              avro_with(event, _with_extra_union_branch(profile.model, "correlation_id", "long"), correlation_id=7),
              payload)
    add_bytes("Avro occurred_at 2**62 ms", avro_with(event, occurred_at=2**62), payload)
    add_bytes("Avro occurred_at -2**62 ms", avro_with(event, occurred_at=-(2**62)), payload)
    add_bytes("Avro schema_version 0", avro_with(event, schema_version=0), payload)

    # Values that are not a JSON object.
    payload = profile.valid()
    text = json_payload(payload)
    add_bytes("empty value", b"", payload)
    add_bytes("null value (tombstone)", None, payload)
    add_bytes("JSON array of the event", b"[" + text + b"]", payload)
    add_bytes("JSON string", b'"' + text.replace(b'"', b'\\"') + b'"', payload)
    add_bytes("JSON number", b"42", payload)
    add_bytes("JSON null", b"null", payload)
    add_bytes("JSON true", b"true", payload)
    add_bytes("BOM + JSON array", BOM + b"[" + text + b"]", payload)
    add_bytes("two BOMs + JSON object", BOM + BOM + text, payload)
    add_bytes("UTF-16 BOM + UTF-16 JSON object", b"\xff\xfe" + text.decode().encode("utf-16-le"), payload)
    add_bytes("BOM only", BOM, payload)
    add_bytes("whitespace only", b" \t\r\n  ", payload)
    add_bytes("truncated JSON", text[: len(text) // 2], payload)
    add_bytes("JSON object + trailing garbage", text + b" trailing", payload)
    add_bytes("two JSON objects", text + text, payload)

    # Fields: types, unknowns, envelope rules.
    add_json("unknown field", {"surprise": "field"})
    add_json("tenant wrong type (number)", {"tenant": 123})
    add_json("tenant null", {"tenant": None})
    add_json("tenant empty", {"tenant": ""})
    add_json("tenant of 129 characters", {"tenant": "t" * 129})
    add_json("tenant with a slash and spaces", {"tenant": "acme / prod"})
    add_json("event_id not a UUID", {"event_id": "not-a-uuid"})
    add_json("event_id wrong type (number)", {"event_id": 42})
    add_json("only the tenant", {}, drop=tuple(k for k in profile.valid() if k not in ("tenant", "event_id")))

    # Bad values under odd keys.
    add_bytes("non-UTF-8 key, garbage value", b"\x07garbage", profile.valid(), key=b"\xff\xfe\xfd")
    add_json("key disagreeing with the keyed field, invalid value", {"schema_version": 0}, key=b"somebody-else")
    add_json("null key, invalid value", {"schema_version": 0}, key=None)

    for name, changes in profile.specific:
        add_json(name, changes)
    for case in cases:
        case.must_refuse = case.name not in profile.may_succeed
    return cases


def unique_ids(cases: list[Case]) -> list[Case]:
    """Forget the event id of cases that share one: an answer naming it could not be told apart."""
    counts: dict[str, int] = {}
    for case in cases:
        if case.event_id:
            counts[case.event_id] = counts.get(case.event_id, 0) + 1
    for case in cases:
        if case.event_id and counts[case.event_id] > 1:
            case.event_id = None
    return cases


def _padded_to(payload: dict[str, Any], text_field: str, size: int) -> bytes:
    base = len(json_payload({**payload, text_field: ""}))
    return json_payload({**payload, text_field: "x" * max(0, size - base)})


# -- the four input topics ---------------------------------------------------------------------------------

INF, NEG_INF = Raw("1e309"), Raw("-1e309")


def lock_profile(spec: TopicSpec, prefix: str) -> Profile:
    """Lock commands; each case has its own tenant, so one that slips through is answered on its own."""
    counter = iter(range(1_000_000))

    def valid() -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "tenant": f"{prefix}-{next(counter)}", "action": "enable",
                "user": "ann", "roles": ["admin"], "reason": "fuzz", "ttl_seconds": 600}

    def strangers() -> list[Envelope]:
        return [LockState(tenant=f"{prefix}-x", status="active", fencing_token=1),
                UsageEvent(tenant=f"{prefix}-x", provider="openai", model="gpt-4o", kind="chat", input_tokens=1)]

    return Profile(spec, LockCommand, "tenant", valid, "reason", strangers, specific=[
        ("action out of the enum", {"action": "explode"}),
        ("action null", {"action": None}),
        ("roles as a string", {"roles": "admin"}),
        ("roles of numbers", {"roles": [1, 2]}),
        ("user empty", {"user": ""}),
        ("user wrong type (object)", {"user": {"name": "ann"}}),
        ("ttl_seconds 0", {"ttl_seconds": 0}),
        ("ttl_seconds -1", {"ttl_seconds": -1}),
        ("ttl_seconds 1.5", {"ttl_seconds": 1.5}),
        ("ttl_seconds 10**30", {"ttl_seconds": 10**30}),
        ("ttl_seconds 2**63 (over Avro long)", {"ttl_seconds": 2**63}),
        ("ttl_seconds 1e309 (inf)", {"ttl_seconds": INF}),
        ("ttl_seconds as text", {"ttl_seconds": "ten"}),
        ("reason wrong type (list)", {"reason": ["a", "b"]}),
    ])


def turn_profile(spec: TopicSpec, tenant: str, prefix: str) -> Profile:
    """Conversation turns of one tenant; each case has its own session (the key of the topic)."""
    counter = iter(range(1_000_000))

    def valid() -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "tenant": tenant, "session_id": f"{prefix}-{next(counter)}",
                "user": "ann", "prompt": "Say hello.", "max_tokens": 8}

    def strangers() -> list[Envelope]:
        return [TurnEvent(tenant=tenant, session_id=f"{prefix}-x", turn_id="t", type="completed"),
                LockCommand(tenant=tenant, action="status", user="ann")]

    return Profile(spec, ConversationTurn, "session_id", valid, "prompt", strangers, specific=[
        ("session_id empty", {"session_id": ""}),
        ("session_id wrong type (number)", {"session_id": 123}),
        ("prompt empty", {"prompt": ""}),
        ("prompt longer than SOMA_TURN_MAX_PROMPT_CHARS", {"prompt": "word " * 1000}),
        ("max_tokens 0", {"max_tokens": 0}),
        ("max_tokens -1", {"max_tokens": -1}),
        ("max_tokens 10**30", {"max_tokens": 10**30}),
        ("max_tokens 2**63 (over Avro long)", {"max_tokens": 2**63}),
        ("temperature 1e309 (inf)", {"temperature": INF}),
        ("temperature -1e309 (-inf)", {"temperature": NEG_INF}),
        ("temperature 3.0", {"temperature": 3.0}),
        ("temperature as text", {"temperature": "hot"}),
        ("memory.top_k 0", {"memory": {"collection": "notes", "top_k": 0}}),
        ("memory.top_k 10**30", {"memory": {"collection": "notes", "top_k": 10**30}}),
        ("memory with an unknown field", {"memory": {"collection": "notes", "depth": 3}}),
        ("memory.collection empty", {"memory": {"collection": ""}}),
    ])


def embedding_profile(spec: TopicSpec, tenant: str, max_document_chars: int) -> Profile:
    """Embedding jobs of one tenant (answers name the job id)."""

    def valid() -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "tenant": tenant, "job": "upsert", "collection": "fuzz",
                "documents": [{"id": "d1", "text": "a short note about rivers", "metadata": {"n": 1}}]}

    def strangers() -> list[Envelope]:
        return [EmbeddingResult(tenant=tenant, job_id="j", status="ok"),
                ConversationTurn(tenant=tenant, session_id="s", user="ann", prompt="hi")]

    search = {"job": "search", "query": "rivers", "documents": []}
    return Profile(spec, EmbeddingJob, "tenant", valid, "collection", strangers, specific=[
        ("job out of the enum", {"job": "reindex"}),
        ("upsert without documents", {"documents": []}),
        ("documents as a string", {"documents": "d1"}),
        ("document text over SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS",
         {"documents": [{"id": "d1", "text": "w " * max_document_chars}]}),
        ("document text lone surrogate", {"documents": [{"id": "d1", "text": Raw('"x\\ud800"')}]}),
        ("document metadata nested 900 deep", {"documents": [{"id": "d1", "text": "t", "metadata": _nested(900)}]}),
        ("doc_ids of numbers", {"job": "delete", "documents": [], "doc_ids": [1, 2]}),
        ("filter as a string", {"job": "delete", "documents": [], "filter": "tenant = x"}),
        ("top_k 0", {**search, "top_k": 0}),
        ("top_k -1", {**search, "top_k": -1}),
        ("top_k 10**30", {**search, "top_k": 10**30}),
        ("top_k 2**63 (over Avro long)", {**search, "top_k": 2**63}),
        ("score_threshold 1e309 (inf)", {**search, "score_threshold": INF}),
        ("score_threshold -1e309 (-inf)", {**search, "score_threshold": NEG_INF}),
    ], may_succeed=frozenset({"document metadata nested 900 deep"}))


def usage_profile(spec: TopicSpec, tenant: str, occurred_at: str) -> Profile:
    """Usage events of one tenant, all inside one hour window (so a later rollup shows what was counted)."""

    def valid() -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "tenant": tenant, "occurred_at": occurred_at, "provider": "openai",
                "model": "gpt-4o", "kind": "chat", "input_tokens": 3, "output_tokens": 2}

    def strangers() -> list[Envelope]:
        return [UsageReport(tenant=tenant, report="rollup"),
                EmbeddingJob(tenant=tenant, job="delete", collection="c", doc_ids=["d"])]

    return Profile(spec, UsageEvent, "tenant", valid, "model", strangers, specific=[
        ("kind out of the enum", {"kind": "image"}),
        ("provider empty", {"provider": ""}),
        ("input_tokens -1", {"input_tokens": -1}),
        ("input_tokens 10**30", {"input_tokens": 10**30}),
        ("input_tokens 2**63 (over Avro long)", {"input_tokens": 2**63}),
        ("input_tokens 2**63-1 (max Avro long)", {"input_tokens": 2**63 - 1}),
        ("input_tokens 1.5", {"input_tokens": 1.5}),
        ("output_tokens 1e309 (inf)", {"output_tokens": INF}),
        ("cached_tokens above input_tokens", {"cached_tokens": 9}),
        ("cost_usd 1e309 (inf)", {"cost_usd": INF}),
        ("cost_usd -1e309 (-inf)", {"cost_usd": NEG_INF}),
        ("cost_usd -0.01", {"cost_usd": -0.01}),
        ("cost_usd 1e300", {"cost_usd": 1e300}),
        ("latency_ms 1e309 (inf)", {"latency_ms": INF}),
    ])


def usage_avro_cases(profile: Profile) -> list[Case]:
    """Avro frames whose doubles and longs are legal Avro but outside any sane usage contract."""
    cases = []
    changed: list[tuple[str, dict[str, Any]]] = [
        ("Avro cost_usd inf", {"cost_usd": float("inf")}),
        ("Avro cost_usd NaN", {"cost_usd": float("nan")}),
        ("Avro latency_ms inf", {"latency_ms": float("inf")}),
        ("Avro input_tokens 2**63-1", {"input_tokens": 2**63 - 1}),
        ("Avro output_tokens -5", {"output_tokens": -5}),
    ]
    for name, changes in changed:
        payload = profile.valid()
        event = profile.model.model_validate(payload)
        cases.append(Case(name, profile.key_of(payload), avro_with(event, **changes), event.event_id,
                          _subject(profile, payload)))
    return cases


def embedding_avro_cases(profile: Profile) -> list[Case]:
    cases = []
    changed: list[tuple[str, dict[str, Any]]] = [
        ("Avro score_threshold NaN", {"score_threshold": float("nan")}),
        ("Avro score_threshold inf", {"score_threshold": float("inf")}),
        ("Avro top_k 0", {"top_k": 0}),
        ("Avro top_k 2**63-1", {"top_k": 2**63 - 1}),
        ("Avro filter holding invalid JSON", {"filter": "{not json"}),
    ]
    for name, changes in changed:
        payload = {**profile.valid(), "job": "search", "query": "rivers", "documents": []}
        event = profile.model.model_validate(payload)
        cases.append(Case(name, profile.key_of(payload), avro_with(event, **changes), event.event_id,
                          _subject(profile, payload)))
    return cases


def turn_avro_cases(profile: Profile) -> list[Case]:
    cases = []
    changed: list[tuple[str, dict[str, Any]]] = [
        ("Avro temperature NaN", {"temperature": float("nan")}),
        ("Avro temperature inf", {"temperature": float("inf")}),
        ("Avro max_tokens 0", {"max_tokens": 0}),
        ("Avro max_tokens -1", {"max_tokens": -1}),
    ]
    for name, changes in changed:
        payload = profile.valid()
        event = profile.model.model_validate(payload)
        cases.append(Case(name, profile.key_of(payload), avro_with(event, **changes), event.event_id,
                          _subject(profile, payload)))
    return cases


def lock_avro_cases(profile: Profile) -> list[Case]:
    raw = copy.deepcopy(_entry(LockCommand).raw)
    for spec in raw["fields"]:
        if spec["name"] == "action":
            spec["type"]["symbols"] = [*spec["type"]["symbols"], "explode"]
    cases = []
    with_schema: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = [
        ("Avro enum index out of range (action)", raw, {"action": "explode"}),
        ("Avro ttl_seconds 2**63-1", None, {"ttl_seconds": 2**63 - 1}),
        ("Avro ttl_seconds -1", None, {"ttl_seconds": -1}),
        ("Avro ttl_seconds 0", None, {"ttl_seconds": 0}),
    ]
    for name, schema, changes in with_schema:
        payload = profile.valid()
        event = profile.model.model_validate(payload)
        cases.append(Case(name, profile.key_of(payload), avro_with(event, schema, **changes),
                          event.event_id, _subject(profile, payload)))
    return cases


def _nested(depth: int) -> Raw:
    """Objects nested ``depth`` deep, as JSON text (a Python structure this deep would not survive json.dumps)."""
    return Raw('{"a": ' * depth + "1" + "}" * depth)
