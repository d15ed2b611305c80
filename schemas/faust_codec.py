"""The ``soma_avro`` Faust codec: topics declared with it carry Confluent-framed Avro events.

Kept out of :mod:`schemas.codec` because importing Faust's codec module pulls in aiohttp, which tools
that only decode bytes should not pay. The codec is a thin adapter: agents still
validate input with :func:`schemas.decode_event` when a JSON object arrives, since a JSON object does
not say which event type it is.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.codec import MAGIC_BYTE, decode_any, encode_event, read_json_object
from schemas.envelope import Envelope
from schemas.exceptions import DecodeError, EncodeError

__all__ = ["CODEC_NAME", "SomaAvroCodec", "register_faust_codec"]

CODEC_NAME = "soma_avro"


class SomaAvroCodec(codecs.Codec):
    """Envelope models <-> framed Avro; JSON objects are passed on as plain dicts."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Envelope):
            return encode_event(obj)
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        raise EncodeError(
            f"the {CODEC_NAME} codec writes event models (or ready bytes), not {type(obj).__name__}"
        )

    def _loads(self, s: bytes) -> Any:
        if not s:
            raise DecodeError(
                "empty payload: neither Confluent-framed Avro nor a JSON object"
            )
        if s[0] == MAGIC_BYTE:
            return decode_any(s)
        return read_json_object(s)


def register_faust_codec() -> SomaAvroCodec:
    """Register the codec under ``"soma_avro"`` (idempotent) and return the registered instance."""
    existing = codecs.codecs.get(CODEC_NAME)
    if isinstance(existing, SomaAvroCodec):
        return existing
    codec = SomaAvroCodec()
    codecs.register(CODEC_NAME, codec)
    return codec
