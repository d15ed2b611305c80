"""The conversation agent when the model misbehaves: killed mid-answer, down, back again; training 'allow'.

Each test has its own broker, worker and (where it kills one) model server. Nothing is simulated: a
dead provider is a port nothing listens on, a crash is a SIGKILL of the real llama.cpp server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from connectors.broker import free_port
from connectors.model_server import EmbeddedModelServer
from schemas import ConversationTurn, decode_event
from streams.catalog import CONVERSATION_TURNS
from streams.dlq import parse_dlq_headers
from tests.integration.conftest import ADMIN, LockClient, Stack, TurnClient

pytestmark = pytest.mark.integration


def _turn(tenant: str, prompt: str, max_tokens: int = 24) -> dict[str, Any]:
    return {"tenant": tenant, "session_id": f"s-{uuid.uuid4().hex[:10]}", "user": "ann", "prompt": prompt,
            "max_tokens": max_tokens, "temperature": 0}


async def _dlq_entry(turns: TurnClient, turn: ConversationTurn) -> Any:
    entries = await turns.dlq.wait_for(
        lambda r: decode_event(r.value or b"", ConversationTurn).event_id == turn.event_id)
    return parse_dlq_headers(entries[0].headers)


async def test_a_provider_killed_mid_answer_fails_the_turn_and_the_next_is_served_once_it_is_back(
    stack_factory: Callable[[], Stack], model_server_factory: Callable[..., EmbeddedModelServer],
    turn_client_factory: Any, tenant: str,
) -> None:
    server = model_server_factory()
    stack = stack_factory()
    stack.worker(OPENAI_BASE_URL=server.base_url, SOMA_LLM_MAX_RETRIES="0").wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)

    turn = await turns.send(_turn(tenant, "Write a long story about a dragon who learns to bake bread.", 400))
    await turns.events.wait_for(lambda r: any(e.type == "chunk" for e in turns.answers(turn.event_id)), timeout=90)
    server.kill()

    final = await turns.finished(turn.event_id)
    assert final.type == "failed"
    assert "LLMStreamError" in (final.error or ""), final.error
    types = [event.type for event in turns.answers(turn.event_id)]
    assert "completed" not in types, "a partial answer is never marked completed"
    letter = await _dlq_entry(turns, turn)
    assert letter.error_class == "LLMStreamError" and letter.topic == CONVERSATION_TURNS.name

    model_server_factory(port=server.port)  # the model comes back where it was: the agent serves again
    _, after = await turns.ask(_turn(tenant, "Hello again?"))
    assert after.type == "completed", after.error


async def test_the_circuit_opens_on_a_dead_provider_and_recovers_when_it_returns(
    stack_factory: Callable[[], Stack], model_server_factory: Callable[..., EmbeddedModelServer],
    turn_client_factory: Any, tenant: str,
) -> None:
    port = free_port()
    stack = stack_factory()
    stack.worker(
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", SOMA_LLM_MAX_RETRIES="0", SOMA_LLM_CIRCUIT_FAILURES="2",
        SOMA_LLM_CIRCUIT_RESET_SECONDS="3",
    ).wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)

    failures = []
    for _ in range(3):
        turn, final = await turns.ask(_turn(tenant, "Hello?"))
        assert final.type == "failed"
        failures.append((turn, final))
    assert all("LLMUnavailable" in (final.error or "") for _, final in failures[:2]), failures
    assert "CircuitOpenError" in (failures[2][1].error or ""), failures[2][1].error
    for turn, _ in failures:
        assert (await _dlq_entry(turns, turn)).error_class in ("LLMUnavailable", "CircuitOpenError")

    model_server_factory(port=port)  # the provider comes back
    await asyncio.sleep(3.5)  # past the breaker's reset timeout: the next call is the probe
    _, recovered = await turns.ask(_turn(tenant, "Hello again?"))
    assert recovered.type == "completed", recovered.error
    _, after = await turns.ask(_turn(tenant, "And again?"))
    assert after.type == "completed", after.error


async def test_training_mode_allow_answers_and_marks_the_turn(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any,
    lock_client_factory: Any, tenant: str,
) -> None:
    stack = stack_factory()
    stack.worker(OPENAI_BASE_URL=model_server.base_url, SOMA_TRAINING_MODE_POLICY="allow").wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)
    locks: LockClient = await lock_client_factory(stack.bootstrap)
    assert (await locks.ask({"tenant": tenant, "action": "enable", **ADMIN})).status == "active"
    await asyncio.sleep(0.5)

    turn, final = await turns.ask(_turn(tenant, "Hello?"))

    assert final.type == "completed", final.error
    assert all(event.training_mode for event in turns.answers(turn.event_id))
    _, other = await turns.ask(_turn(f"{tenant}-b", "Hello?"))
    assert other.type == "completed" and other.training_mode is False


async def test_a_worker_killed_mid_answer_loses_no_turn(
    stack_factory: Callable[[], Stack], model_server: EmbeddedModelServer, turn_client_factory: Any, tenant: str,
) -> None:
    """The turn's offset is not committed while it is being answered, so the next worker answers it."""
    stack = stack_factory()
    first = stack.worker(OPENAI_BASE_URL=model_server.base_url)
    first.wait_ready("conversation")
    turns: TurnClient = await turn_client_factory(stack.bootstrap)

    turn = await turns.send(_turn(tenant, "Write a long story about a dragon who learns to bake bread.", 200))
    await turns.events.wait_for(lambda r: any(e.type == "chunk" for e in turns.answers(turn.event_id)), timeout=90)
    await asyncio.sleep(1.0)  # several ticks: a commit of the turn's offset would have happened by now
    first.kill()

    stack.worker(app_id=first.app_id, OPENAI_BASE_URL=model_server.base_url).wait_ready("conversation")
    final = await turns.finished(turn.event_id, timeout=120)
    assert final.type == "completed", final.error
    started = [event for event in turns.answers(turn.event_id) if event.type == "started"]
    assert len(started) == 2, "answered again from the start by the second worker"
