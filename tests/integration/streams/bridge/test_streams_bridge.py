"""The SSE bridge against the real embedded broker, as real ``soma bridge`` processes.

Events are produced to the result topics as the agents produce them (Avro TurnEvents keyed by session);
every check reads what an HTTP client reads. Two bridges share the broker: ``ring`` resumes from its
in-memory replay ring, ``kafka`` has no ring (every resume reads Kafka back) and a small client buffer.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import LockState, TurnEvent, decode_event, to_json_dict
from streams.bridge.client import ServerEvent, read_events, stream_session
from streams.catalog import CONVERSATION_EVENTS, LOCK_STATE
from tests.support.bridge import BridgeProcess, token, turn_event
from tests.support.poison import poison_values
from tests.support.stack import produce_raw, start_broker

pytestmark = pytest.mark.integration


class Bridges:
    def __init__(self, bootstrap: str, ring: BridgeProcess, kafka: BridgeProcess) -> None:
        self.bootstrap = bootstrap
        self.ring = ring
        self.kafka = kafka


@pytest.fixture(scope="module")
def bridges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridges]:
    workdir = tmp_path_factory.mktemp("bridge")
    broker = start_broker(workdir)
    ring = BridgeProcess(broker.bootstrap_servers, workdir / "ring")
    kafka = BridgeProcess(broker.bootstrap_servers, workdir / "kafka", extra_env={
        "SOMA_BRIDGE_REPLAY_RECORDS": "0", "SOMA_BRIDGE_CLIENT_BUFFER": "16",
        "SOMA_BRIDGE_HEARTBEAT_SECONDS": "0.3", "SOMA_BRIDGE_WRITE_TIMEOUT_SECONDS": "20",
        "SOMA_BRIDGE_CORS_ORIGINS": "https://app.example",
    })
    try:
        ring.start(wait=False)
        kafka.start()
        ring.wait_ready()
        yield Bridges(broker.bootstrap_servers, ring, kafka)
    finally:
        ring.stop()
        kafka.stop()
        broker.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        yield session


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


async def produce_turn_events(bootstrap: str, tenant: str, session: str, seqs: range, turn_id: str = "t-1") -> None:
    await produce_raw(bootstrap, CONVERSATION_EVENTS.name,
                      [turn_event(tenant, session, seq, turn_id)[:2] for seq in seqs])


class Reader:
    """One open event stream: its data events and the last id seen."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[dict[str, Any]] = []
        self.controls: list[ServerEvent] = []
        self.last_id: str | None = None
        self._iter = read_events(response).__aiter__()

    async def take(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Read until ``count`` more data events arrived (or a control event ends the stream)."""
        wanted = len(self.events) + count
        async with asyncio.timeout(timeout):
            while len(self.events) < wanted:
                item = await self._iter.__anext__()
                if isinstance(item, int):
                    continue
                if item.id is not None:
                    self.last_id = item.id
                if item.event != "message":
                    self.controls.append(item)
                    break
                if item.data:
                    self.events.append(json.loads(item.data))
        return self.events[wanted - count:]

    async def idle(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever arrives within ``seconds`` (to check that nothing more comes)."""
        before = len(self.events)
        try:
            await self.take(1_000_000, timeout=seconds)
        except TimeoutError:
            pass
        return self.events[before:]

    def close(self) -> None:
        self.response.close()


async def open_stream(http: aiohttp.ClientSession, url: str, tok: str | None, last_id: str | None = None,
                      **params: str) -> Reader:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    if last_id:
        headers["Last-Event-ID"] = last_id
    response = await http.get(url, headers=headers, params=params)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    reader = Reader(response)
    await reader.take(0)  # nothing yet; the id-only first frame is read lazily
    return reader


def session_url(bridge: BridgeProcess, session: str) -> str:
    return f"{bridge.url}/v1/sessions/{session}/events"


# -- streaming and resume -----------------------------------------------------------------------------------


async def test_a_session_stream_carries_its_tenants_session_only(bridges: Bridges, http: aiohttp.ClientSession,
                                                                  ) -> None:
    tenant, other, session = _tenant(), _tenant(), _session()
    reader = await open_stream(http, session_url(bridges.ring, session), token(tenant))
    await asyncio.sleep(0.3)
    await produce_turn_events(bridges.bootstrap, other, session, range(100, 103))  # same session id, other tenant
    await produce_turn_events(bridges.bootstrap, tenant, _session(), range(200, 203))  # same tenant, other session
    await produce_turn_events(bridges.bootstrap, tenant, session, range(5))
    events = await reader.take(5)
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert {(e["tenant"], e["session_id"]) for e in events} == {(tenant, session)}
    assert await reader.idle(0.5) == []
    assert reader.last_id is not None and reader.last_id.startswith(CONVERSATION_EVENTS.name + "@")
    reader.close()


@pytest.mark.parametrize("first,second", [("ring", "ring"), ("kafka", "kafka"), ("ring", "kafka")])
async def test_resume_with_last_event_id_is_exact(bridges: Bridges, http: aiohttp.ClientSession, first: str,
                                                  second: str) -> None:
    """Read part, drop the connection, miss events, resume (on the same or another bridge): exactly the rest."""
    tenant, session = _tenant(), _session()
    tok = token(tenant)
    reader = await open_stream(http, session_url(getattr(bridges, first), session), tok)
    await asyncio.sleep(0.3)
    await produce_turn_events(bridges.bootstrap, tenant, session, range(10))
    head = await reader.take(4)
    reader.close()
    assert [e["seq"] for e in head] == [0, 1, 2, 3]
    await produce_turn_events(bridges.bootstrap, tenant, session, range(10, 20))  # while disconnected
    await asyncio.sleep(0.3)
    resumed = await open_stream(http, session_url(getattr(bridges, second), session), tok, reader.last_id)
    rest = await resumed.take(16)
    await produce_turn_events(bridges.bootstrap, tenant, session, range(20, 23))  # live again after the backlog
    rest += await resumed.take(3)
    assert [e["seq"] for e in rest] == list(range(4, 23))
    assert await resumed.idle(0.5) == []
    resumed.close()


async def test_a_connect_before_any_event_resumes_from_where_it_connected(bridges: Bridges,
                                                                          http: aiohttp.ClientSession) -> None:
    tenant, session = _tenant(), _session()
    reader = await open_stream(http, session_url(bridges.kafka, session), token(tenant))
    first = await reader._iter.__anext__()  # retry: value
    frame = await reader._iter.__anext__()  # the id-only frame
    assert first == 300 and isinstance(frame, ServerEvent) and frame.id and not frame.data
    reader.close()
    await produce_turn_events(bridges.bootstrap, tenant, session, range(3))
    resumed = await open_stream(http, session_url(bridges.kafka, session), token(tenant), frame.id)
    assert [e["seq"] for e in await resumed.take(3)] == [0, 1, 2]
    resumed.close()


async def test_from_earliest_replays_the_retained_events(bridges: Bridges, http: aiohttp.ClientSession) -> None:
    tenant, session = _tenant(), _session()
    await produce_turn_events(bridges.bootstrap, tenant, session, range(6))
    for bridge in (bridges.ring, bridges.kafka):
        reader = await open_stream(http, session_url(bridge, session), token(tenant), **{"from": "earliest"})
        assert [e["seq"] for e in await reader.take(6)] == list(range(6))
        reader.close()
        latest = await open_stream(http, session_url(bridge, session), token(tenant))
        assert await latest.idle(0.5) == []
        latest.close()


@pytest.mark.parametrize("which", ["ring", "kafka"])
async def test_reconnecting_during_a_steady_stream_loses_and_repeats_nothing(
        bridges: Bridges, http: aiohttp.ClientSession, which: str) -> None:
    """The catch-up → live handover under fire: events keep coming while the client drops and resumes."""
    bridge = getattr(bridges, which)
    tenant, session = _tenant(), _session()
    tok = token(tenant)
    total = 300
    rng = random.Random(7)

    async def producer() -> None:
        for start in range(0, total, 10):
            await produce_turn_events(bridges.bootstrap, tenant, session, range(start, start + 10))
            await asyncio.sleep(0.02)

    reader = await open_stream(http, session_url(bridge, session), tok)
    task = asyncio.create_task(producer())
    received: list[int] = []
    reconnects = 0
    while len(received) < total:
        want = min(rng.randint(1, 40), total - len(received))
        events = await reader.take(want, timeout=30)
        received += [e["seq"] for e in events]
        last_id = reader.last_id
        reader.close()
        reconnects += 1
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.1)
        reader = await open_stream(http, session_url(bridge, session), tok, last_id)
    await task
    assert await reader.idle(0.5) == []
    reader.close()
    assert received == list(range(total))
    assert reconnects > 5


async def test_resume_after_a_bridge_restart(tmp_path_factory: pytest.TempPathFactory, bridges: Bridges,
                                             http: aiohttp.ClientSession) -> None:
    bridge = BridgeProcess(bridges.bootstrap, tmp_path_factory.mktemp("restart")).start()
    try:
        tenant, session = _tenant(), _session()
        tok = token(tenant)
        reader = await open_stream(http, session_url(bridge, session), tok)
        await asyncio.sleep(0.3)
        await produce_turn_events(bridges.bootstrap, tenant, session, range(5))
        head = await reader.take(5)
        bridge.kill()  # SIGKILL: no goodbye to the client
        await produce_turn_events(bridges.bootstrap, tenant, session, range(5, 12))
        with pytest.raises((aiohttp.ClientError, StopAsyncIteration, TimeoutError)):
            await reader.take(1, timeout=5)
        bridge.start()
        resumed = await open_stream(http, session_url(bridge, session), tok, reader.last_id)
        rest = await resumed.take(7)
        assert [e["seq"] for e in head + rest] == list(range(12))
        assert await resumed.idle(0.5) == []
        resumed.close()
    finally:
        bridge.stop()


async def test_the_python_client_resumes_by_itself(tmp_path_factory: pytest.TempPathFactory, bridges: Bridges,
                                                   ) -> None:
    bridge = BridgeProcess(bridges.bootstrap, tmp_path_factory.mktemp("client")).start()
    try:
        tenant, session = _tenant(), _session()
        got: list[int] = []

        async def follow() -> None:
            async for event in stream_session(bridge.url, session, token(tenant)):
                got.append(event["seq"])
                if len(got) == 20:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.5)
        await produce_turn_events(bridges.bootstrap, tenant, session, range(8))
        async with asyncio.timeout(15):
            while len(got) < 8:
                await asyncio.sleep(0.05)
        bridge.kill()
        await produce_turn_events(bridges.bootstrap, tenant, session, range(8, 14))
        bridge.start()
        await produce_turn_events(bridges.bootstrap, tenant, session, range(14, 20))
        await asyncio.wait_for(task, 30)
        assert got == list(range(20))
    finally:
        bridge.stop()


# -- tenant isolation ---------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    subscriptions=st.lists(st.tuples(st.sampled_from("ABC"), st.one_of(st.none(), st.sampled_from("xyz"))),
                           min_size=1, max_size=5),
    events=st.lists(st.tuples(st.sampled_from("ABC"), st.sampled_from("xyz")), min_size=1, max_size=25),
)
async def test_a_client_sees_exactly_its_tenants_events(bridges: Bridges, subscriptions: list[tuple[str, str | None]],
                                                        events: list[tuple[str, str]]) -> None:
    """Random tenants and keys: each stream gets exactly the events of its tenant (and key), in order."""
    run = uuid.uuid4().hex[:6]
    tenants = {name: f"{name}-{run}" for name in "ABC"}
    keys = {name: f"{name}-{run}" for name in "xyz"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        readers = []
        for tenant, key in subscriptions:
            if key is None:
                url = f"{bridges.ring.url}/v1/streams/conversation-events"
                readers.append(await open_stream(http, url, token(tenants[tenant])))
            else:
                readers.append(await open_stream(http, session_url(bridges.ring, keys[key]), token(tenants[tenant])))
        await asyncio.sleep(0.3)
        messages = [turn_event(tenants[t], keys[k], seq)[:2] for seq, (t, k) in enumerate(events)]
        await produce_raw(bridges.bootstrap, CONVERSATION_EVENTS.name, messages)
        for reader, (tenant, key) in zip(readers, subscriptions, strict=True):
            expected = [seq for seq, (t, k) in enumerate(events) if t == tenant and (key is None or k == key)]
            got = await reader.take(len(expected)) if expected else []
            got += await reader.idle(0.3)
            assert {e["tenant"] for e in got} <= {tenants[tenant]}
            if key is None:  # several sessions → several partitions: order holds per session
                assert sorted(e["seq"] for e in got) == expected
            else:
                assert [e["seq"] for e in got] == expected
            reader.close()


async def test_other_result_topics_are_filtered_by_tenant_and_key(bridges: Bridges, http: aiohttp.ClientSession,
                                                                  ) -> None:
    tenant, other = _tenant(), _tenant()
    url = f"{bridges.ring.url}/v1/streams/lock-state"
    everything = await open_stream(http, url, token(tenant))
    only_rejections = await open_stream(http, url, token(tenant), key=f"{tenant}#rejected")
    await asyncio.sleep(0.3)

    def state(t: str, status: str, key: str) -> tuple[bytes, bytes]:
        from schemas import encode_event
        return key.encode(), encode_event(LockState(tenant=t, status=status, holder="ann"))  # type: ignore[arg-type]

    await produce_raw(bridges.bootstrap, LOCK_STATE.name, [
        state(other, "active", other), state(tenant, "active", tenant), state(tenant, "rejected", f"{tenant}#rejected"),
        state(other, "rejected", f"{other}#rejected"), state(tenant, "released", tenant),
    ])
    got = await everything.take(3)
    assert sorted(e["status"] for e in got) == ["active", "rejected", "released"]
    assert {e["tenant"] for e in got} == {tenant}
    assert [e["status"] for e in await only_rejections.take(1)] == ["rejected"]
    assert await everything.idle(0.3) == [] and await only_rejections.idle(0.1) == []
    everything.close()
    only_rejections.close()


# -- auth -----------------------------------------------------------------------------------------------------


async def test_auth_failures(bridges: Bridges, http: aiohttp.ClientSession) -> None:
    tenant, session = _tenant(), _session()
    url = session_url(bridges.ring, session)

    async def status(method: str, target: str, tok: str | None = None, **kwargs: Any) -> int:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        async with http.request(method, target, headers=headers, **kwargs) as response:
            if response.status in (401, 403):
                assert "error" in await response.json()
            return response.status

    from streams.bridge.auth import mint_token
    assert await status("GET", url) == 401  # no token
    assert await status("GET", url, "not-a-jwt") == 401
    assert await status("GET", url, mint_token("another-secret-0123456789abcdef0123", tenant, ["events:read"])) == 401
    assert await status("GET", url, token(tenant, ttl=-60)) == 401  # expired
    assert await status("GET", url, token(tenant, scopes=("turns:write",))) == 403  # no events:read
    assert await status("GET", f"{bridges.ring.url}/v1/streams/usage-reports", token(tenant),
                        params={"tenant": _tenant()}) == 403  # another tenant's stream
    assert await status("POST", f"{bridges.ring.url}/v1/turns", token(tenant),
                        json={"tenant": _tenant(), "session_id": session, "prompt": "hi"}) == 403
    assert await status("POST", f"{bridges.ring.url}/v1/turns", token(tenant, scopes=("events:read",)),
                        json={"session_id": session, "prompt": "hi"}) == 403
    assert await status("POST", f"{bridges.ring.url}/v1/turns", json={"session_id": session, "prompt": "hi"}) == 401
    # A GET stream also takes the token as ?access_token= (EventSource cannot send headers) or the cookie.
    async with http.get(url, params={"access_token": token(tenant)}) as response:
        assert response.status == 200
    async with http.get(url, cookies={"soma_token": token(tenant)}) as response:
        assert response.status == 200
    async with http.get(url, params={"access_token": token(tenant, ttl=-60)}) as response:
        assert response.status == 401
    metrics = await (await http.get(f"{bridges.ring.url}/metrics")).text()
    assert re.search(r'soma_bridge_auth_failures_total\{status="401"\} [1-9]', metrics)


async def test_bad_requests_are_refused_clearly(bridges: Bridges, http: aiohttp.ClientSession) -> None:
    tok = token(_tenant())
    headers = {"Authorization": f"Bearer {tok}"}
    async with http.get(session_url(bridges.ring, "s"), headers={**headers, "Last-Event-ID": "nope"}) as response:
        assert response.status == 400
    async with http.get(session_url(bridges.ring, "s"),
                        headers={**headers, "Last-Event-ID": f"{LOCK_STATE.name}@0:1"}) as response:
        assert response.status == 400, "an id of another stream"
    async with http.get(f"{bridges.ring.url}/v1/streams/nope", headers=headers) as response:
        assert response.status == 404
    async with http.post(f"{bridges.ring.url}/v1/turns", headers=headers, json={"session_id": "s"}) as response:
        assert response.status == 422
        assert "prompt" in (await response.json())["error"]
    async with http.post(f"{bridges.ring.url}/v1/turns", headers=headers, data=b"[1") as response:
        assert response.status == 400


# -- slow clients, many clients, the plumbing ---------------------------------------------------------------


async def test_a_slow_client_is_cut_off_with_a_reason_and_can_resume(bridges: Bridges) -> None:
    """A client that stops reading: its queue (16) fills, it gets a final ``cut`` event, then resumes exactly."""
    tenant, session = _tenant(), _session()
    tok = token(tenant)
    host, port = "127.0.0.1", bridges.kafka.port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(f"GET /v1/sessions/{session}/events?access_token={tok} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await asyncio.sleep(0.5)
    total = 400
    big = "x" * 20_000  # 400 × 20 kB: far more than the socket buffers hold
    await produce_raw(bridges.bootstrap, CONVERSATION_EVENTS.name,
                      [turn_event(tenant, session, seq, delta=big)[:2] for seq in range(total)])
    await asyncio.sleep(2.0)  # the bridge's writes block, its queue for us fills up
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    body = b""
    async with asyncio.timeout(20):
        while not re.search(rb"event: cut\ndata: .*\n\n", body):
            chunk = await loop.sock_recv(sock, 1 << 20)
            assert chunk, "connection closed before the cut event"
            body += chunk
    sock.close()
    text = body.decode()
    seqs = [int(m) for m in re.findall(r'"seq":(\d+)', text)]
    ids = re.findall(r"^id: (.+)$", text, flags=re.M)
    assert 0 < len(seqs) < total and seqs == list(range(len(seqs)))
    cut = re.search(r"event: cut\ndata: (.+)\n", text)
    assert cut and "fell behind" in json.loads(cut.group(1))["reason"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        resumed = await open_stream(http, session_url(bridges.ring, session), tok, ids[-1])
        rest = await resumed.take(total - len(seqs), timeout=30)
        assert [e["seq"] for e in rest] == list(range(len(seqs), total))
        resumed.close()
        metrics = await (await http.get(f"{bridges.kafka.url}/metrics")).text()
        assert re.search(r"soma_bridge_clients_cut_total [1-9]", metrics)


async def test_a_thousand_concurrent_clients(bridges: Bridges) -> None:
    """1,000 open streams on one bridge (100 sessions × 10 clients): each gets exactly its session's events;
    when they leave, the subscriber index is empty again (memory does not grow with clients that left)."""
    tenant = _tenant()
    tok = token(tenant)
    sessions = [_session() for _ in range(100)]
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        async def connect(session: str) -> Reader:
            return await open_stream(http, f"{bridges.ring.url}/v1/sessions/{session}/events", tok)

        readers = await asyncio.gather(*(connect(s) for s in sessions for _ in range(10)))
        connected = time.monotonic() - started
        metrics = await (await http.get(f"{bridges.ring.url}/metrics")).text()
        assert re.search(r"^soma_bridge_clients 1000\.0$", metrics, flags=re.M), "1,000 clients held at once"
        await produce_raw(bridges.bootstrap, CONVERSATION_EVENTS.name,
                          [turn_event(tenant, s, seq)[:2] for seq in range(3) for s in sessions])
        results = await asyncio.gather(*(r.take(3, timeout=40) for r in readers))
        for reader, events, session in zip(readers, results, [s for s in sessions for _ in range(10)], strict=True):
            assert [(e["session_id"], e["seq"]) for e in events] == [(session, 0), (session, 1), (session, 2)]
            reader.close()
        delivered = time.monotonic() - started
        async with asyncio.timeout(20):
            while True:
                metrics = await (await http.get(f"{bridges.ring.url}/metrics")).text()
                if re.search(r"^soma_bridge_clients 0\.0$", metrics, flags=re.M):
                    break
                await asyncio.sleep(0.2)
        assert re.search(r"^soma_bridge_index_buckets 0\.0$", metrics, flags=re.M)
    print(f"1000 clients: connected in {connected:.1f} s, all events delivered after {delivered:.1f} s")


async def test_heartbeats_health_metrics_cors_and_the_page(bridges: Bridges, http: aiohttp.ClientSession) -> None:
    tok = token(_tenant())
    async with http.get(session_url(bridges.kafka, _session()), params={"access_token": tok},
                        headers={"Origin": "https://app.example"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        body = b""
        async with asyncio.timeout(5):
            while body.count(b": keep-alive") < 2:
                body += await response.content.readany()
    async with http.options(f"{bridges.kafka.url}/v1/turns", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}) as response:
        assert response.status == 204
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    async with http.options(f"{bridges.kafka.url}/v1/turns", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as response:
        assert response.status == 403
    async with http.get(f"{bridges.ring.url}/v1/sessions/s/events", params={"access_token": tok},
                        headers={"Origin": "https://app.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers, "ring bridge allows no origins"
    for path, expected in (("/healthz", 200), ("/readyz", 200)):
        async with http.get(bridges.ring.url + path) as response:
            assert response.status == expected
    async with http.get(bridges.ring.url + "/metrics") as response:
        text = await response.text()
        assert "soma_bridge_records_read_total" in text and "soma_bridge_clients" in text
    async with http.get(bridges.ring.url + "/") as response:
        assert response.status == 200 and "EventSource" in await response.text()


# -- poison records ----------------------------------------------------------------------------------------


async def test_poison_records_are_skipped_live_and_in_a_resume(bridges: Bridges, http: aiohttp.ClientSession) -> None:
    """Garbage written by a plain Kafka client between valid events: every client still gets the valid ones."""
    tenant, session = _tenant(), _session()
    tok = token(tenant)
    valid = to_json_dict(turn_event(tenant, session, 0)[2])
    poison = [(session.encode(), value) for _, value in poison_values(valid)]
    live = {name: await open_stream(http, session_url(getattr(bridges, name), session), tok)
            for name in ("ring", "kafka")}
    await asyncio.sleep(0.3)
    await produce_turn_events(bridges.bootstrap, tenant, session, range(2))
    for name, reader in live.items():
        assert [e["seq"] for e in await reader.take(2)] == [0, 1], name
    await produce_raw(bridges.bootstrap, CONVERSATION_EVENTS.name, poison)
    await produce_turn_events(bridges.bootstrap, tenant, session, range(2, 4))
    for name, reader in live.items():
        # Records that still decode (a huge but valid schema_version) are delivered; the rest are skipped.
        after = [e["seq"] for e in await reader.take(2 + _decodable(poison), timeout=30)]
        assert after[-2:] == [2, 3], f"{name}: the stream stopped at the poison records"
    # A client that resumes from before the poison reads it back from Kafka (kafka bridge: no ring).
    assert live["kafka"].last_id is not None
    resumed = await open_stream(http, session_url(bridges.kafka, session), tok, _rewind(live["kafka"].last_id))
    again = [e["seq"] for e in await resumed.take(4 + _decodable(poison), timeout=30)]
    assert again[0] == 0 and again[-2:] == [2, 3]
    for reader in (*live.values(), resumed):
        reader.close()
    for bridge in (bridges.ring, bridges.kafka):
        async with http.get(bridge.url + "/readyz") as response:
            assert response.status == 200
        async with http.get(bridge.url + "/metrics") as response:
            text = await response.text()
        skipped = sum(float(m) for m in re.findall(
            rf'^soma_bridge_records_skipped_total{{topic="{CONVERSATION_EVENTS.name}"}} (\S+)$', text, flags=re.M))
        assert skipped >= len(poison) - _decodable(poison), text[-2000:]


def _decodable(records: list[tuple[bytes, bytes]]) -> int:
    count = 0
    for _, value in records:
        try:
            decode_event(value, TurnEvent)
        except Exception:
            continue
        count += 1
    return count


def _rewind(event_id: str) -> str:
    """The position before everything: every partition at offset 0."""
    topic, _, body = event_id.rpartition("@")
    return topic + "@" + ",".join(f"{part.split(':')[0]}:0" for part in body.split(","))
