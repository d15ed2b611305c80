"""The ``soma_avro`` Faust codec adapter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from faust.serializers import codecs

from schemas import DecodeError, EncodeError, LockCommand, encode_event
from schemas.faust_codec import SomaAvroCodec, register_faust_codec


def test_registered_codec_round_trips_events(
    lock_command_factory: Callable[..., LockCommand],
) -> None:
    registered = register_faust_codec()
    assert register_faust_codec() is registered
    codec = codecs.get_codec("soma_avro")
    assert isinstance(codec, SomaAvroCodec)
    command = lock_command_factory()
    data = codec.dumps(command)
    assert data == encode_event(command)
    assert codec.loads(data) == command


def test_codec_passes_bytes_through_and_returns_json_objects_as_dicts() -> None:
    codec = SomaAvroCodec()
    assert codec.dumps(b"\x00\x00\x00\x00\x01raw") == b"\x00\x00\x00\x00\x01raw"
    assert codec.loads(b'{"tenant": "t", "action": "status"}') == {
        "tenant": "t",
        "action": "status",
    }


def test_codec_rejects_other_objects_and_garbage() -> None:
    codec = SomaAvroCodec()
    with pytest.raises(EncodeError):
        codec.dumps({"tenant": "t"})
    with pytest.raises(DecodeError):
        codec.loads(b"garbage")
    with pytest.raises(DecodeError):
        codec.loads(b"")
