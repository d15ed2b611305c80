"""Bounds of every value in the event contracts, and the annotated types that enforce them.

A value that passes validation must never make a later step fail: encoding it as Avro (``int`` is
32-bit, ``long`` 64-bit, ``double`` finite here), summing it into a rollup, adding a TTL or a window to
a timestamp. So every number has a range that fits its wire type *and* what it means (a single model
call does not use 10**12 tokens), every string and list has a length limit, and the free-form JSON
fields (``metadata``, ``filter``) have a depth and a size limit. The README's "Wire format and
contracts" section lists the same figures; change both together.

Floats refuse ``inf`` and ``NaN`` through the models' ``allow_inf_nan=False`` (JSON ``1e309`` parses to
``inf`` in Python); the JSON-object check below refuses them inside free-form values too.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import to_json

__all__ = [
    "ANSWER_MAX_CHARS",
    "COST_MAX_USD",
    "COUNT_MAX",
    "DOCUMENTS_MAX",
    "DOC_IDS_MAX",
    "DOC_ID_MAX_CHARS",
    "DURATION_MAX_MS",
    "ERROR_MAX_CHARS",
    "FENCING_TOKEN_MAX",
    "HITS_MAX",
    "JSON_INT_MAX",
    "JSON_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "MAX_TOKENS_MAX",
    "NAME_MAX_CHARS",
    "REASON_MAX_CHARS",
    "ROLES_MAX",
    "SCHEMA_VERSION_MAX",
    "SOURCES_MAX",
    "SUM_MAX",
    "TEXT_MAX_CHARS",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "TOP_K_MAX",
    "TTL_MAX_SECONDS",
    "Amount",
    "Count",
    "DiagnosticText",
    "DocId",
    "DurationMs",
    "JsonObject",
    "Name",
    "Sum",
    "UsdPerCall",
    "check_json_object",
]

logger = logging.getLogger(__name__)

#: Timestamps: ``TIMESTAMP_MIN <= t < TIMESTAMP_MAX`` as an instant, whatever offset it was written
#: with. Far enough from ``datetime``'s year 1 / 9999 that windows, month ends and TTLs added to a
#: valid timestamp never overflow, and inside Avro ``timestamp-millis`` (a ``long``) with room to spare.
TIMESTAMP_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_MAX = datetime(2200, 1, 1, tzinfo=UTC)

#: Identifiers and names: users, roles, sessions, models, providers, collections, correlation ids.
NAME_MAX_CHARS = 256
#: Document ids (often URLs or paths, so longer than names).
DOC_ID_MAX_CHARS = 1024
#: Free text going to a model or a vector store: prompts, queries, document and chunk texts.
TEXT_MAX_CHARS = 1_000_000
#: The model's answer in a TurnEvent (``text``, ``delta``).
ANSWER_MAX_CHARS = 10_000_000
#: A lock command's ``reason`` (kept with the lock, echoed in answers).
REASON_MAX_CHARS = 10_000
#: Diagnostics on answers (``error``, ``detail``): longer values are cut to this length, not refused,
#: since they carry other components' messages that an agent must always be able to report.
ERROR_MAX_CHARS = 10_000

#: Counts of one call or one job: tokens of a model call, chunk indexes, ``seq``, upserted/deleted
#: chunks, history points. Largest context windows today are ~10**7 tokens.
COUNT_MAX = 1_000_000_000
#: Sums in usage reports (tokens, events): what an Avro ``long`` holds. Reaching it needs more than
#: 9 * 10**9 maximal events in one window.
SUM_MAX = 2**63 - 1
#: Fencing tokens grow by one per grant; 2**53 - 1 keeps them exact for JSON readers using doubles
#: (JavaScript) when read from Redis.
FENCING_TOKEN_MAX = 2**53 - 1
#: ``schema_version`` is an Avro ``int``; versions are small numbers.
SCHEMA_VERSION_MAX = 1000
#: A lock's TTL (one year and a day): expiries stay far inside the timestamp range.
TTL_MAX_SECONDS = 366 * 86_400
#: ``max_tokens`` of a turn (the agent lowers it further to ``SOMA_TURN_MAX_TOKENS_CAP``).
MAX_TOKENS_MAX = 1_000_000
#: ``top_k`` of a search job (memory specs of turns allow at most 50).
TOP_K_MAX = 1000
#: Cost of one model call, in USD.
COST_MAX_USD = 1_000_000.0
#: Durations measured on one call/turn/job (``latency_ms``, ``ttft_ms``): at most 7 days.
DURATION_MAX_MS = 7 * 86_400_000.0

ROLES_MAX = 100
DOCUMENTS_MAX = 1000
DOC_IDS_MAX = 10_000
HITS_MAX = TOP_K_MAX
SOURCES_MAX = TOP_K_MAX

#: Free-form JSON objects (``metadata``, ``filter``): containers nested at most this deep (the object
#: itself is depth 1), at most this many bytes as compact UTF-8 JSON, integers within an int64 (what
#: Qdrant payloads hold).
JSON_MAX_DEPTH = 32
JSON_MAX_BYTES = 65_536
JSON_INT_MAX = 2**63 - 1


def _cut(limit: int) -> Any:
    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit - 1] + "…"
        return value

    return cut


Name = Annotated[str, Field(max_length=NAME_MAX_CHARS)]
"""An identifier or name (add ``min_length`` at the field when it may not be empty)."""

DocId = Annotated[str, Field(max_length=DOC_ID_MAX_CHARS)]

DiagnosticText = Annotated[str, BeforeValidator(_cut(ERROR_MAX_CHARS))]
"""An error or detail message on an answer, cut to ``ERROR_MAX_CHARS``."""

Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]
Sum = Annotated[int, Field(ge=0, le=SUM_MAX)]
UsdPerCall = Annotated[float, Field(ge=0.0, le=COST_MAX_USD)]
Amount = Annotated[float, Field(ge=0.0)]
"""A non-negative amount on a report: USD, forecast tokens, a budget share (finite, as every float)."""
DurationMs = Annotated[float, Field(ge=0.0, le=DURATION_MAX_MS)]


def check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse anything in a free-form JSON object that a JSON writer, Avro or Qdrant cannot take.

    Walks iteratively (a value nested thousands deep must give a reason, not a RecursionError),
    adding up a bound of the value's JSON size on the way; only a value whose bound exceeds
    ``JSON_MAX_BYTES`` is serialised to measure it exactly. Runs for every document of every
    embedding job, hence the inlined loop.
    """
    if not value:
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    bound = 0
    while stack:
        node, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {JSON_MAX_DEPTH} levels")
        bound += 2
        if type(node) is dict:
            for key in node:
                if type(key) is not str:
                    raise ValueError(
                        f"JSON object keys must be strings, not {type(key).__name__}"
                    )
                if not key.isascii():
                    _check_unicode(key)
                bound += 6 * len(key) + 4
            items = node.values()
        else:
            items = node
        for item in items:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _check_unicode(item)
                bound += 6 * len(item) + 3
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
                bound += 1
            elif kind is int:
                if not -JSON_INT_MAX <= item <= JSON_INT_MAX:
                    raise ValueError(f"JSON integer outside ±(2**63 - 1): {_short(item)}")
                bound += _NUMBER_BOUND
            elif kind is float:
                if not math.isfinite(item):
                    raise ValueError(f"JSON numbers must be finite (got {item})")
                bound += _NUMBER_BOUND
            elif item is None or kind is bool:
                bound += 6
            else:
                raise ValueError(f"{kind.__name__} is not a JSON value")
    if bound > JSON_MAX_BYTES:
        size = len(to_json(value))
        if size > JSON_MAX_BYTES:
            raise ValueError(f"JSON value of {size} bytes, more than {JSON_MAX_BYTES}")
    return value


#: Longest JSON spelling of a float (``-1.2345678901234567e-308``) or an int64, plus a separator.
_NUMBER_BOUND = 26


def _check_unicode(text: str) -> None:
    """Strings must be encodable as UTF-8 (a character then takes at most 6 bytes in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a JSON string holds a lone surrogate (U+{ord(text[exc.start]):04X}), "
            "which UTF-8 cannot encode"
        ) from None


def _short(number: int) -> str:
    """An int for a reason (``str`` of an int of more than 4300 digits raises)."""
    if number.bit_length() > 1000:
        return f"a {number.bit_length()}-bit number"
    digits = str(number)
    return digits if len(digits) <= 40 else digits[:37] + "..."


JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_object)]
"""A free-form JSON object within the bounds above (``metadata``, ``filter``)."""
