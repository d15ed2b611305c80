"""The conversation agent end to end: real broker, real worker, real llama.cpp server on SmolLM2-135M.

Every check reads what a client would read: TurnEvents on ``soma.conversation.events``, UsageEvents on
``soma.usage.events`` and entries of ``soma.conversation.turns.dlq``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.llm import ChatClient
from connectors.model_server import SMOLLM2_MODEL_ALIAS, prompt_renderer_for_model
from schemas import ConversationTurn, TurnEvent, UsageEvent, decode_event, encode_event
from streams.catalog import CONVERSATION_TURNS
from streams.dlq import parse_dlq_headers
from tests.integration.conftest import ADMIN, TEST_PRICES, LockClient, Stack, TurnClient, write_test_prices
from tests.support.stack import json_bytes, produce_raw

pytestmark = pytest.mark.integration

MAX_PROMPT_CHARS = 2000


@pytest.fixture(scope="module")
def conversation_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, model_server: Any) -> Iterator[Stack]:
    """A broker and one worker (all agents) answering with the shared model server."""
    from tests.support.stack import start_broker

    workdir = tmp_path_factory.mktemp("conversation")
    stack = Stack(start_broker(workdir), redis_url, workdir)
    try:
        worker = stack.worker(
            OPENAI_BASE_URL=model_server.base_url,
            SOMA_PRICES_FILE=str(write_test_prices(workdir)),
            SOMA_TURN_MAX_PROMPT_CHARS=str(MAX_PROMPT_CHARS),
            SOMA_TRAINING_MODE_POLICY="reject",
            SOMA_LLM_PROVIDER="llama.cpp",
        )
        worker.wait_ready("conversation")
        worker.wait_ready("locks")
        yield stack
    finally:
        stack.close()


@pytest.fixture
async def turns(conversation_stack: Stack, turn_client_factory: Any) -> TurnClient:
    client: TurnClient = await turn_client_factory(conversation_stack.bootstrap)
    return client


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def _turn(tenant: str, session: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"tenant": tenant, "session_id": session, "user": "ann", "prompt": prompt, "max_tokens": 24,
            "temperature": 0, **extra}


async def test_chunks_arrive_in_order_and_make_up_the_completed_text(turns: TurnClient, tenant: str) -> None:
    turn, final = await turns.ask(_turn(tenant, _session(), "Name three colours."))

    assert final.type == "completed", final.error
    events = turns.answers(turn.event_id)
    assert events[0].type == "started"
    assert events[-1].type == "completed"
    chunks = [e for e in events if e.type == "chunk"]
    assert chunks, "an answer streams as chunk events"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == final.text
    assert final.text.strip()
    assert final.finish_reason in ("stop", "length")
    assert final.seq == len(chunks)
    assert final.causation_id == turn.event_id and final.tenant == tenant
    assert final.ttft_ms is not None and 0 < final.ttft_ms <= final.latency_ms  # type: ignore[operator]


async def test_usage_is_counted_and_priced_and_published(turns: TurnClient, tenant: str,
                                                         model_server: Any) -> None:
    turn, final = await turns.ask(_turn(tenant, _session(), "What is the capital of France?"))

    assert final.type == "completed", final.error
    usage = final.usage
    assert usage is not None and usage.counted_by == "tokenizer", "llama.cpp streams carry no usage"
    # The prompt as the server templates it, counted by the server's own tokenizer.
    counter = ChatClient(model_server.base_url, "no-key", SMOLLM2_MODEL_ALIAS,
                         prompt_renderer=prompt_renderer_for_model(SMOLLM2_MODEL_ALIAS))
    try:
        expected = await counter.count_usage([{"role": "user", "content": turn.prompt}], final.text)
    finally:
        await counter.close()
    assert usage.input_tokens == expected.input_tokens
    assert usage.output_tokens == expected.output_tokens
    price = TEST_PRICES["models"]["smollm2-135m-instruct"]
    cost = (usage.input_tokens * price["input"] + usage.output_tokens * price["output"]) / 1_000_000
    assert final.cost_usd == pytest.approx(cost)

    records = await turns.usage.wait_for(
        lambda r: decode_event(r.value or b"", UsageEvent).source_event_id == turn.event_id)
    assert len(records) == 1
    event = decode_event(records[0].value or b"", UsageEvent)
    assert records[0].key == tenant.encode()
    assert (event.kind, event.model, event.provider) == ("chat", SMOLLM2_MODEL_ALIAS, "llama.cpp")
    assert (event.input_tokens, event.output_tokens) == (usage.input_tokens, usage.output_tokens)
    assert event.cost_usd == pytest.approx(cost)


async def test_the_next_turn_sees_the_history_of_its_session_only(turns: TurnClient, tenant: str,
                                                                   model_server: Any) -> None:
    session = _session()
    first, first_final = await turns.ask(_turn(tenant, session, "My name is Zed."))
    second, second_final = await turns.ask(_turn(tenant, session, "What is my name?"))
    other, other_final = await turns.ask(_turn(tenant, _session(), "What is my name?"))
    assert first_final.type == second_final.type == other_final.type == "completed"

    counter = ChatClient(model_server.base_url, "no-key", SMOLLM2_MODEL_ALIAS,
                         prompt_renderer=prompt_renderer_for_model(SMOLLM2_MODEL_ALIAS))
    try:
        with_history = await counter.count_usage([
            {"role": "user", "content": first.prompt},
            {"role": "assistant", "content": first_final.text},
            {"role": "user", "content": second.prompt},
        ], "")
        alone = await counter.count_usage([{"role": "user", "content": other.prompt}], "")
    finally:
        await counter.close()
    assert second_final.usage is not None and other_final.usage is not None
    assert second_final.usage.input_tokens == with_history.input_tokens, "turn 2's prompt holds turn 1"
    assert other_final.usage.input_tokens == alone.input_tokens, "another session starts empty"


async def test_a_duplicate_turn_is_answered_once(turns: TurnClient, tenant: str) -> None:
    session = _session()
    turn = ConversationTurn.model_validate(_turn(tenant, session, "Say hello."))
    message = (session.encode(), encode_event(turn))
    await produce_raw(turns.bootstrap, CONVERSATION_TURNS.name, [message, message])
    final = await turns.finished(turn.event_id)
    assert final.type == "completed", final.error
    await produce_raw(turns.bootstrap, CONVERSATION_TURNS.name, [message])  # again, after it completed
    # A later turn of the same session is answered after any duplicate would have been.
    _, marker = await turns.ask(_turn(tenant, session, "Say goodbye."))
    assert marker.type == "completed"

    types = [event.type for event in turns.answers(turn.event_id)]
    assert types.count("started") == 1 and types.count("completed") == 1, types


async def test_an_oversized_prompt_fails_and_goes_to_the_dlq(turns: TurnClient, tenant: str) -> None:
    turn, final = await turns.ask(_turn(tenant, _session(), "x" * (MAX_PROMPT_CHARS + 1)))

    assert final.type == "failed"
    assert "SOMA_TURN_MAX_PROMPT_CHARS" in (final.error or "")
    assert [e.type for e in turns.answers(turn.event_id)] == ["failed"], "refused before the model is asked"
    entries = await turns.dlq.wait_for(lambda r: decode_event(r.value or b"", ConversationTurn).event_id
                                       == turn.event_id)
    letter = parse_dlq_headers(entries[0].headers)
    assert letter.topic == CONVERSATION_TURNS.name and letter.error_class == "TurnRefused"
    assert str(MAX_PROMPT_CHARS) in letter.error_message


async def test_an_invalid_turn_gets_a_failed_answer_and_goes_to_the_dlq(turns: TurnClient, tenant: str) -> None:
    session = _session()
    bad = json_bytes({"tenant": tenant, "session_id": session, "user": "ann"})  # no prompt
    await produce_raw(turns.bootstrap, CONVERSATION_TURNS.name, [(session.encode(), bad)])

    answered = await turns.events.wait_for(lambda r: r.key == session.encode())
    failed = decode_event(answered[0].value or b"", TurnEvent)
    assert failed.type == "failed" and failed.tenant == tenant
    assert "prompt" in (failed.error or ""), failed.error
    entries = await turns.dlq.wait_for(lambda r: r.value == bad)
    assert parse_dlq_headers(entries[0].headers).error_class == "EventValidationError"


async def test_training_mode_rejects_turns_while_the_lock_is_active(
    turns: TurnClient, tenant: str, conversation_stack: Stack, lock_client_factory: Any
) -> None:
    locks: LockClient = await lock_client_factory(conversation_stack.bootstrap)
    granted = await locks.ask({"tenant": tenant, "action": "enable", "reason": "fine-tune", **ADMIN})
    assert granted.status == "active"
    await asyncio.sleep(0.5)  # the worker's view of the lock topic follows within a fetch

    _, refused = await turns.ask(_turn(tenant, _session(), "Hello?"))
    assert refused.type == "failed"
    assert "training mode" in (refused.error or "") and "ann" in (refused.error or "")

    released = await locks.ask({"tenant": tenant, "action": "disable", **ADMIN})
    assert released.status == "released"
    await asyncio.sleep(0.5)
    _, answered = await turns.ask(_turn(tenant, _session(), "Hello?"))
    assert answered.type == "completed", answered.error
    assert answered.training_mode is False


MEMORY_DOCUMENTS = [
    {"id": "vacation", "text": "Employees get 25 days of paid holiday each year; unused days expire in March.",
     "metadata": {}},
    {"id": "printer", "text": "The office printer on floor 2 needs toner cartridges of type HP 26A.", "metadata": {}},
    {"id": "parking", "text": "Bicycles may be parked in the basement garage next to the elevators.", "metadata": {}},
]


async def test_a_turn_with_memory_gets_its_tenants_relevant_chunks_and_lists_them(
    turns: TurnClient, tenant: str, conversation_stack: Stack,
) -> None:
    from tests.support.embedding_client import EmbeddingClient

    embeddings = await EmbeddingClient(conversation_stack.bootstrap).start()
    try:
        stored = await embeddings.ask({"tenant": tenant, "job": "upsert", "collection": "handbook",
                                       "documents": MEMORY_DOCUMENTS}, timeout=180)
        assert stored.status == "ok", stored.error
    finally:
        await embeddings.stop()
    question = "How much time off do I have per year?"  # shares no content word with the vacation document

    turn, with_memory = await turns.ask(_turn(tenant, _session(), question,
                                               memory={"collection": "handbook", "top_k": 2}))
    _, without = await turns.ask(_turn(tenant, _session(), question))
    _, other_tenant = await turns.ask(_turn(f"{tenant}-x", _session(), question,
                                            memory={"collection": "handbook", "top_k": 2}))

    assert with_memory.type == "completed", with_memory.error
    assert with_memory.sources and with_memory.sources[0].doc_id == "vacation", with_memory.sources
    assert len(with_memory.sources) == 2 and all(s.collection == "handbook" for s in with_memory.sources)
    assert with_memory.sources[0].score > with_memory.sources[1].score
    assert with_memory.usage is not None and without.usage is not None
    assert with_memory.usage.input_tokens > without.usage.input_tokens + 20, "the chunks are in the prompt"
    assert without.sources == []
    assert other_tenant.type == "completed" and other_tenant.sources == [], "another tenant sees none of them"
    assert [e.type for e in turns.answers(turn.event_id)][-1] == "completed"
