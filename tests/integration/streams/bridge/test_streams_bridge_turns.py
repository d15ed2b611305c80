"""Conversation turns through the bridge end to end: real broker, real worker, the real SmolLM2 model,
``soma bridge``, and a real headless Chromium running the bridge's web page.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from streams.bridge.client import stream_events, stream_session
from tests.integration.conftest import Stack, TurnClient
from tests.support.bridge import BridgeProcess, token
from tests.support.browser import Chromium
from tests.support.stack import start_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def turn_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, model_server: Any,
               ) -> Iterator[tuple[Stack, BridgeProcess]]:
    workdir = tmp_path_factory.mktemp("bridge-turns")
    stack = Stack(start_broker(workdir), redis_url, workdir)
    bridge = BridgeProcess(stack.bootstrap, workdir / "bridge")
    try:
        worker = stack.worker(OPENAI_BASE_URL=model_server.base_url, SOMA_LLM_PROVIDER="llama.cpp")
        bridge.start(wait=False)
        worker.wait_ready("conversation")
        bridge.wait_ready()
        yield stack, bridge
    finally:
        bridge.stop()
        stack.close()


@pytest.fixture
async def turns(turn_stack: tuple[Stack, BridgeProcess], turn_client_factory: Any) -> TurnClient:
    client: TurnClient = await turn_client_factory(turn_stack[0].bootstrap)
    return client


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    chromium = await Chromium().start()
    yield chromium
    await chromium.close()


def _ids() -> tuple[str, str]:
    return f"t-{uuid.uuid4().hex[:10]}", f"s-{uuid.uuid4().hex[:10]}"


async def _post_turn(bridge: BridgeProcess, tok: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{bridge.url}/v1/turns", json=body, headers={"Authorization": f"Bearer {tok}"}) as response:
        answer = await response.json()
        assert response.status == 202, answer
        return dict(answer)


async def test_a_turn_end_to_end_over_http(turn_stack: tuple[Stack, BridgeProcess], turns: TurnClient) -> None:
    """POST a turn, then follow the stream URL it answered: started, ordered chunks, completed — the same
    events the conversation agent published, nothing else."""
    _, bridge = turn_stack
    tenant, session = _ids()
    tok = token(tenant, subject="ann")
    answer = await _post_turn(bridge, tok, {"session_id": session, "prompt": "Name three colours.",
                                            "max_tokens": 24, "temperature": 0})
    assert answer["session_id"] == session and answer["stream_url"].startswith(f"/v1/sessions/{session}/events")
    await asyncio.sleep(3)  # connect late on purpose: the cursor in the URL still covers the whole answer
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(90):
        async for event in stream_events(bridge.url + answer["stream_url"], tok):
            events.append(event)
            if event["type"] in ("completed", "failed"):
                break
    final = events[-1]
    assert final["type"] == "completed", final
    assert events[0]["type"] == "started"
    assert {e["turn_id"] for e in events} == {answer["turn_id"]}
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == final["text"] and final["text"].strip()
    await turns.finished(answer["turn_id"])
    published = turns.answers(answer["turn_id"])
    assert [e.event_id for e in published] == [e["event_id"] for e in events]
    assert published[0].tenant == tenant


async def test_the_python_helper_follows_a_session(turn_stack: tuple[Stack, BridgeProcess]) -> None:
    _, bridge = turn_stack
    tenant, session = _ids()
    tok = token(tenant)
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for event in stream_session(bridge.url, session, tok):
            seen.append(event)
            if event["type"] in ("completed", "failed"):
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(1.0)
    await _post_turn(bridge, tok, {"session_id": session, "prompt": "Say hello.", "max_tokens": 16, "temperature": 0})
    await asyncio.wait_for(task, 90)
    assert seen[0]["type"] == "started" and seen[-1]["type"] == "completed"
    assert "".join(e["delta"] for e in seen if e["type"] == "chunk") == seen[-1]["text"]


async def _page_state(browser: Chromium) -> dict[str, Any]:
    raw = await browser.evaluate("""JSON.stringify({
        order: __soma.order, opens: __soma.opens, errors: __soma.errors,
        turns: Object.fromEntries(Object.entries(__soma.turns).map(([id, t]) =>
            [id, {seqs: t.seqs, text: t.text, final: t.final,
                  shown: t.el.querySelector('.reply').textContent}]))})""")
    return dict(json.loads(raw))


async def _ask_in_page(browser: Chromium, bridge: BridgeProcess, tenant: str, session: str, prompt: str,
                       max_tokens: int) -> str:
    await browser.goto(f"{bridge.url}/?token={token(tenant, subject='web')}&session={session}"
                       f"&max_tokens={max_tokens}&temperature=0")
    await browser.evaluate(f"document.getElementById('prompt').value = {json.dumps(prompt)};"
                           "document.getElementById('ask').requestSubmit(); true")
    turn_id: str = await browser.wait_for("__soma.order[0]", timeout=15)
    return turn_id


async def test_the_web_page_holds_a_conversation(turn_stack: tuple[Stack, BridgeProcess], turns: TurnClient,
                                                 browser: Chromium) -> None:
    """Type a prompt in the page in real Chromium: the reply streams in through EventSource."""
    _, bridge = turn_stack
    tenant, session = _ids()
    turn_id = await _ask_in_page(browser, bridge, tenant, session, "Name three animals.", 32)
    await browser.wait_for("Object.values(__soma.turns).some(t => t.seqs.length > 0)", timeout=60)
    await browser.wait_for(f"__soma.turns[{json.dumps(turn_id)}].final", timeout=90)
    state = await _page_state(browser)
    page_turn = state["turns"][turn_id]
    final = await turns.finished(turn_id)
    assert final.type == "completed" and page_turn["final"]["type"] == "completed"
    assert page_turn["shown"] == final.text == page_turn["text"]
    chunks = [e for e in turns.answers(turn_id) if e.type == "chunk"]
    assert page_turn["seqs"] == [c.seq for c in chunks] == list(range(len(chunks)))
    assert state["opens"] == 1


async def test_a_connection_dropped_mid_reply_loses_nothing(turn_stack: tuple[Stack, BridgeProcess],
                                                            turns: TurnClient, browser: Chromium) -> None:
    """The bridge dies (SIGKILL) while the page is receiving a reply and comes back: EventSource reconnects
    with Last-Event-ID and the page ends with every chunk exactly once and the full reply."""
    _, bridge = turn_stack
    tenant, session = _ids()
    turn_id = await _ask_in_page(browser, bridge, tenant, session,
                                 "Count from 1 to 100, with every number written out in words.", 160)
    await browser.wait_for(f"(__soma.turns[{json.dumps(turn_id)}] || {{seqs: []}}).seqs.length > 0", timeout=60,
                           interval=0.02)
    bridge.kill()
    before = await _page_state(browser)
    assert before["turns"][turn_id]["final"] is None, "the reply must still be streaming when the bridge dies"
    seen_before = len(before["turns"][turn_id]["seqs"])
    await asyncio.sleep(1.0)
    bridge.start()
    await browser.wait_for(f"__soma.turns[{json.dumps(turn_id)}].final", timeout=90)
    state = await _page_state(browser)
    page_turn = state["turns"][turn_id]
    final = await turns.finished(turn_id)
    chunks = [e for e in turns.answers(turn_id) if e.type == "chunk"]
    assert final.type == "completed"
    assert len(chunks) > seen_before, "chunks were published while the page was cut off"
    assert page_turn["seqs"] == list(range(len(chunks))), "every chunk once, in order"
    assert page_turn["shown"] == final.text
    assert "".join(c.delta for c in chunks) == final.text
    assert state["errors"] >= 1, "the page saw the connection drop"
