"""The pure parts of the conversation agent: history bounds, prompt building, chunk coalescing."""

from __future__ import annotations

import time

import pytest

from agents.conversation import _Chunker, build_messages, estimate_tokens, history_key, memory_prompt, trim_history
from schemas import ConversationTurn, Hit


def _entry(user: str, assistant: str, tokens: int) -> dict[str, object]:
    return {"user": user, "assistant": assistant, "tokens": tokens}


def test_history_keeps_the_newest_turns_within_both_bounds() -> None:
    history = [_entry(f"q{i}", f"a{i}", 10) for i in range(6)]

    assert [e["user"] for e in trim_history(history, max_turns=3, max_tokens=1000)] == ["q3", "q4", "q5"]
    assert [e["user"] for e in trim_history(history, max_turns=10, max_tokens=25)] == ["q4", "q5"]
    assert trim_history(history, max_turns=0, max_tokens=1000) == []


def test_a_turn_over_the_token_budget_ends_the_history_there() -> None:
    history = [_entry("old", "a", 5), _entry("huge", "a", 500), _entry("new", "a", 5)]

    assert [e["user"] for e in trim_history(history, max_turns=10, max_tokens=100)] == ["new"]


def test_prompt_is_system_then_history_then_the_new_prompt() -> None:
    messages = build_messages("be brief", [_entry("hi", "hello", 2)], "and now?")

    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    assert build_messages(None, [], "x") == [{"role": "user", "content": "x"}]


def test_history_is_keyed_by_tenant_and_session() -> None:
    a = ConversationTurn(tenant="a", session_id="s", user="u", prompt="p")
    b = ConversationTurn(tenant="b", session_id="s", user="u", prompt="p")
    assert history_key(a) != history_key(b)


def test_token_estimate_grows_with_the_text() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("x" * 400) == 101


def test_the_first_delta_goes_out_at_once_and_later_ones_are_coalesced() -> None:
    chunker = _Chunker(interval=10.0, max_deltas=3)

    assert chunker.add("a") == "a"
    chunker.sent += 1
    assert chunker.add("b") is None
    assert chunker.add("c") is None
    assert chunker.add("d") == "bcd", "max_deltas reached"
    chunker.sent += 1
    assert chunker.add("e") is None
    assert chunker.drain() == "e"
    assert chunker.drain() is None


def test_deltas_are_released_once_the_interval_has_passed() -> None:
    chunker = _Chunker(interval=0.02, max_deltas=100)
    assert chunker.add("a") == "a"
    chunker.sent += 1
    assert chunker.add("b") is None
    time.sleep(0.03)
    assert chunker.add("c") == "bc"


@pytest.mark.parametrize("interval", [0.0])
def test_a_zero_interval_sends_every_delta(interval: float) -> None:
    chunker = _Chunker(interval=interval, max_deltas=100)
    chunker.sent = 1
    assert chunker.add("x") == "x"


def test_memories_join_the_system_prompt_in_order_of_relevance() -> None:
    hits = [Hit(doc_id="a", chunk=0, score=0.9, text="first"), Hit(doc_id="b", chunk=1, score=0.5, text="second")]

    prompt = memory_prompt("be brief", hits)

    assert prompt is not None and prompt.startswith("be brief\n\n")
    assert prompt.index("- first") < prompt.index("- second")
    assert memory_prompt(None, hits) is not None and memory_prompt(None, hits).startswith("Relevant notes")  # type: ignore[union-attr]
    assert memory_prompt("be brief", []) == "be brief"
    assert memory_prompt(None, []) is None
