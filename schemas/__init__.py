"""Event contracts of SomaAgent Streams: pydantic models, Avro schemas, codecs, compatibility checks.

This is the bottom layer: it imports nothing else of the project. Producers build models, the codec
turns them into Confluent-framed Avro, and consumers decode Avro or JSON back through the same models.

TOPIC_FREE: schemas knows nothing about topic names, partitions or keys; which event type travels on
which topic is declared once, in ``streams/``. Subjects here are event types, not topics.

The Faust codec lives in :mod:`schemas.faust_codec` (importing Faust is slow); ``SomaAvroCodec`` and
``register_faust_codec`` are importable from here too but load Faust only on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schemas.codec import decode_any, decode_event, encode_event, to_json, to_json_dict
from schemas.conversation import (
    ConversationTurn,
    MemorySpec,
    Source,
    TokenUsage,
    TurnEvent,
)
from schemas.embeddings import Document, EmbeddingJob, EmbeddingResult, Hit
from schemas.envelope import Envelope, caused_by, derived_event_id, new_event_id, utc_now
from schemas.exceptions import (
    DecodeError,
    EncodeError,
    EventValidationError,
    SchemaError,
)
from schemas.locks import LockCommand, LockState
from schemas.registry import (
    SUBJECTS,
    latest_schema_id,
    model_for_subject,
    schema_for_id,
)
from schemas.usage import UsageEvent, UsageReport

if TYPE_CHECKING:
    from schemas.faust_codec import SomaAvroCodec, register_faust_codec

__all__ = [
    "SUBJECTS",
    "ConversationTurn",
    "DecodeError",
    "Document",
    "EmbeddingJob",
    "EmbeddingResult",
    "EncodeError",
    "Envelope",
    "EventValidationError",
    "Hit",
    "LockCommand",
    "LockState",
    "MemorySpec",
    "SchemaError",
    "SomaAvroCodec",
    "Source",
    "TokenUsage",
    "TurnEvent",
    "UsageEvent",
    "UsageReport",
    "caused_by",
    "decode_any",
    "decode_event",
    "derived_event_id",
    "encode_event",
    "latest_schema_id",
    "model_for_subject",
    "new_event_id",
    "register_faust_codec",
    "schema_for_id",
    "to_json",
    "to_json_dict",
    "utc_now",
]

_LAZY = {"SomaAvroCodec", "register_faust_codec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from schemas import faust_codec

        return getattr(faust_codec, name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
