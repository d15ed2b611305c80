"""What a replayed record carries: headers, and a value rewritten only when asked."""

from __future__ import annotations

import json

import pytest

from schemas import ConversationTurn, SchemaError, decode_any, decode_event, encode_event
from schemas.codec import is_avro_framed
from streams.tools.replay import replay_headers, rewrite_value

TURNS = "soma.conversation.turns"


def test_replay_headers_keep_the_originals_and_replace_an_earlier_replays() -> None:
    original = [("trace", b"t1"), ("replay.id", b"old"), ("replay.original.offset", b"1")]
    headers = replay_headers(original, b"rid", b"src", b"3", 42, event_id="e1")
    assert headers == [("trace", b"t1"), ("replay.id", b"rid"), ("replay.original.topic", b"src"),
                       ("replay.original.partition", b"3"), ("replay.original.offset", b"42"),
                       ("replay.original.event_id", b"e1")]
    assert ("replay.original.event_id", b"e1") not in replay_headers(None, b"r", b"s", b"0", 1)


def test_new_ids_on_avro_stays_avro_with_a_fresh_id_and_the_rest_unchanged() -> None:
    turn = ConversationTurn(tenant="acme", session_id="s1", user="ann", prompt="hi", model="old-model")
    value, old = rewrite_value(TURNS, encode_event(turn), new_id=True, assignments={"model": "new-model"})
    copy = decode_any(value)
    assert is_avro_framed(value) and old == turn.event_id
    assert copy.event_id != turn.event_id
    assert copy.model_dump(exclude={"event_id", "model"}) == turn.model_dump(exclude={"event_id", "model"})
    assert copy.model == "new-model"  # type: ignore[attr-defined]


def test_new_ids_on_json_stays_json_and_nested_fields_can_be_set() -> None:
    raw = json.dumps({"event_id": "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77", "tenant": "acme", "session_id": "s",
                      "user": "ann", "prompt": "hi"}).encode()
    value, old = rewrite_value(TURNS, raw, new_id=True, assignments={"memory.collection": "docs"})
    assert value.startswith(b"{") and old == "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77"
    copy = decode_event(value, ConversationTurn)
    assert copy.event_id != old and copy.memory is not None and copy.memory.collection == "docs"


def test_a_change_that_breaks_the_contract_is_refused() -> None:
    turn = ConversationTurn(tenant="acme", session_id="s1", user="ann", prompt="hi")
    with pytest.raises(SchemaError, match="max_tokens"):
        rewrite_value(TURNS, encode_event(turn), new_id=False, assignments={"max_tokens": "lots"})
    with pytest.raises(SchemaError):
        rewrite_value(TURNS, b'{"tenant": "acme", "session_id": "s"}', new_id=True, assignments={})
