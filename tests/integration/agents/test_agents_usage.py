"""The usage agent end to end: real broker, a real worker process; checked through Kafka, HTTP and /metrics.

One worker serves the module (each test has its own tenants, and every tenant has its own event-time
clock, so the tests do not disturb each other). It closes windows on event time only
(``SOMA_USAGE_IDLE_CLOSE_SECONDS=0``), which makes every rollup here deterministic; the wall-clock close
of idle tenants has its own worker.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.broker import free_port
from schemas import UsageEvent, UsageReport, decode_event, encode_event, to_json
from streams.catalog import USAGE_EVENTS, USAGE_REPORTS
from streams.dlq import parse_dlq_headers
from tests.integration.conftest import Stack
from tests.support.stack import TopicReader, WorkerProcess, produce_raw, start_broker

pytestmark = pytest.mark.integration

BUDGET_TENANT = "budget-acme"


@pytest.fixture(scope="module")
def usage_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Stack, WorkerProcess]]:
    workdir = tmp_path_factory.mktemp("usagestack")
    budgets = workdir / "budgets.json"
    budgets.write_text(json.dumps({"thresholds": [0.8, 1.0], "tenants": {BUDGET_TENANT: {"monthly_usd": 1.0}}}))
    stack = Stack(start_broker(workdir), redis_url, workdir)
    try:
        worker = stack.worker(
            SOMA_WEB_PORT=str(free_port()),
            SOMA_USAGE_IDLE_CLOSE_SECONDS="0",
            SOMA_USAGE_TICK_SECONDS="1",
            SOMA_BUDGETS_FILE=str(budgets),
        )
        worker.wait_ready("usage")
        yield stack, worker
    finally:
        stack.close()


class UsageClient:
    def __init__(self, bootstrap: str, worker: WorkerProcess, reports: TopicReader, dlq: TopicReader) -> None:
        self.bootstrap = bootstrap
        self.worker = worker
        self.reports = reports
        self.dlq = dlq

    async def send(self, *events: UsageEvent, as_json: bool = False) -> None:
        messages = [(e.tenant.encode(), to_json(e) if as_json else encode_event(e)) for e in events]
        await produce_raw(self.bootstrap, USAGE_EVENTS.name, messages)

    async def wait_reports(self, tenant: str, kind: str, count: int, timeout: float = 30.0) -> list[UsageReport]:
        def matches(record: Any) -> bool:
            report = decode_event(record.value or b"", UsageReport)
            return report.tenant == tenant and report.report == kind

        records = await self.reports.wait_for(matches, timeout=timeout, count=count)
        return [decode_event(r.value or b"", UsageReport) for r in records]

    def all_reports(self, tenant: str, kind: str) -> list[UsageReport]:
        reports = [decode_event(r.value or b"", UsageReport) for r in self.reports.seen]
        return [r for r in reports if r.tenant == tenant and r.report == kind]

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.worker.env()['SOMA_WEB_PORT']}"

    async def get(self, path: str) -> tuple[int, bytes]:
        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(self.web + path, timeout=10) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        return await asyncio.to_thread(fetch)


@pytest.fixture
async def client(usage_stack: tuple[Stack, WorkerProcess]) -> AsyncIterator[UsageClient]:
    stack, worker = usage_stack
    reports = await TopicReader(stack.bootstrap, USAGE_REPORTS.name).start()
    dlq = await TopicReader(stack.bootstrap, USAGE_EVENTS.dlq).start()
    yield UsageClient(stack.bootstrap, worker, reports, dlq)
    await reports.stop()
    await dlq.stop()


def usage(tenant: str, at: str, model: str = "gpt-4o", provider: str = "openai", kind: str = "chat", inp: int = 0,
          out: int = 0, cached: int = 0, cost: float | None = None, event_id: str | None = None) -> UsageEvent:
    return UsageEvent(event_id=event_id or str(uuid.uuid4()), tenant=tenant, occurred_at=at, provider=provider,
                      model=model, kind=kind, input_tokens=inp, output_tokens=out, cached_tokens=cached, cost_usd=cost)


def summarize(reports: list[UsageReport]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    return {
        (r.window, r.window_start.isoformat() if r.window_start else None, r.provider, r.model, r.kind):
        (r.input_tokens, r.output_tokens, r.cached_tokens, r.events, pytest.approx(r.cost_usd, abs=1e-12), r.method)
        for r in reports
    }


async def test_rollups_equal_the_hand_computed_set(client: UsageClient) -> None:
    t = f"roll-{uuid.uuid4().hex[:8]}"
    await client.send(
        usage(t, "2025-03-01T10:05:00Z", inp=1000, out=200, cached=400),  # 0.004 from the price table
        usage(t, "2025-03-01T10:40:00Z", inp=2000, out=100, cost=0.05),  # reported cost
        usage(t, "2025-03-01T10:59:59.999Z", model="text-embedding-3-small", kind="embedding", inp=5000),  # 0.0001
    )
    await client.send(  # JSON producers are accounted alike
        usage(t, "2025-03-01T11:00:00Z", inp=100, out=100),  # 0.00125, first event of the 11:00 window
        usage(t, "2025-03-01T11:30:00Z", provider="local", model="smollm2-135m-instruct", inp=50, out=60),
        usage(t, "2025-03-01T11:31:00Z", provider="acme", model="mystery-model", inp=10, out=10),  # no price
        as_json=True,
    )
    await client.send(usage(t, "2025-03-02T00:10:00Z", model="gpt-4o-mini", inp=1, out=1))  # closes all of 03-01

    rollups = await client.wait_reports(t, "rollup", count=12)
    await asyncio.sleep(1.0)
    await client.reports.poll()
    rollups = client.all_reports(t, "rollup")
    h10, h11, d1 = "2025-03-01T10:00:00+00:00", "2025-03-01T11:00:00+00:00", "2025-03-01T00:00:00+00:00"
    c = "cost: reported={} priced={} unpriced={}".format
    assert summarize(rollups) == {
        ("hour", h10, "openai", "gpt-4o", "chat"): (3000, 300, 400, 2, 0.054, c(1, 1, 0)),
        ("hour", h10, "openai", "text-embedding-3-small", "embedding"): (5000, 0, 0, 1, 0.0001, c(0, 1, 0)),
        ("hour", h10, None, None, None): (8000, 300, 400, 3, 0.0541, c(1, 2, 0)),
        ("hour", h11, "openai", "gpt-4o", "chat"): (100, 100, 0, 1, 0.00125, c(0, 1, 0)),
        ("hour", h11, "local", "smollm2-135m-instruct", "chat"): (50, 60, 0, 1, 0.0, c(0, 1, 0)),
        ("hour", h11, "acme", "mystery-model", "chat"): (10, 10, 0, 1, 0.0, c(0, 0, 1)),
        ("hour", h11, None, None, None): (160, 170, 0, 3, 0.00125, c(0, 2, 1)),
        ("day", d1, "openai", "gpt-4o", "chat"): (3100, 400, 400, 3, 0.05525, c(1, 2, 0)),
        ("day", d1, "openai", "text-embedding-3-small", "embedding"): (5000, 0, 0, 1, 0.0001, c(0, 1, 0)),
        ("day", d1, "local", "smollm2-135m-instruct", "chat"): (50, 60, 0, 1, 0.0, c(0, 1, 0)),
        ("day", d1, "acme", "mystery-model", "chat"): (10, 10, 0, 1, 0.0, c(0, 0, 1)),
        ("day", d1, None, None, None): (8160, 470, 400, 6, 0.05535, c(1, 4, 1)),
    }
    assert len(rollups) == 12, "each rollup reported once"
    keys = {r.key for r in client.reports.seen if decode_event(r.value or b"", UsageReport).tenant == t}
    assert keys == {t.encode()}


async def test_late_events_go_to_the_dlq_and_duplicates_count_once(client: UsageClient) -> None:
    t = f"late-{uuid.uuid4().hex[:8]}"
    dup = usage(t, "2025-03-01T10:10:00Z", inp=5)
    late = usage(t, "2025-03-01T10:59:00Z", inp=1000)
    await client.send(
        dup, dup,
        usage(t, "2025-03-01T11:04:00Z", inp=1),  # event time 11:04: the 10:00 window is open until 11:05
        usage(t, "2025-03-01T10:58:00Z", inp=20),  # late, but within the grace period: counted
        usage(t, "2025-03-01T11:05:00Z", inp=1),  # event time reaches 11:05: the 10:00 window is closed
        late,  # beyond the grace period: DLQ
    )
    await client.send(dup)  # a duplicate in a later batch
    await client.send(usage(t, "2025-03-01T12:30:00Z", inp=1))

    (hour10,) = [r for r in await client.wait_reports(t, "rollup", count=4) if r.window_start
                 and r.window_start.hour == 10 and r.provider is None]
    assert (hour10.input_tokens, hour10.events) == (25, 2)

    records = await client.dlq.wait_for(lambda r: r.key == t.encode(), timeout=30)
    assert len(records) == 1
    letter = parse_dlq_headers(records[0].headers)
    assert letter.error_class == "LateEventError"
    assert "late event" in letter.error_message and "grace 300 s" in letter.error_message
    assert decode_event(records[0].value or b"", UsageEvent).event_id == late.event_id, "the original bytes"


async def test_rule_breaking_event_is_dead_lettered_with_its_reason(client: UsageClient) -> None:
    t = f"bad-{uuid.uuid4().hex[:8]}"
    await client.send(usage(t, "2025-03-01T10:00:00Z", inp=5, cached=9))
    await produce_raw(client.bootstrap, USAGE_EVENTS.name, [(t.encode(), b'{"tenant": "' + t.encode() + b'"}')])
    records = await client.dlq.wait_for(lambda r: r.key == t.encode(), timeout=30, count=2)
    letters = sorted((parse_dlq_headers(r.headers).error_class, parse_dlq_headers(r.headers).error_message)
                     for r in records)
    assert letters[0][0] == "EventValidationError" and "provider" in letters[0][1]
    assert letters[1][0] == "UsageEventError" and "cached_tokens (9) exceeds input_tokens (5)" in letters[1][1]


async def test_forecast_reports_and_the_http_query(client: UsageClient) -> None:
    t = f"fc-{uuid.uuid4().hex[:8]}"
    start = datetime(2025, 3, 10, tzinfo=UTC)
    await client.send(*(usage(t, (start + timedelta(hours=h, minutes=1)).isoformat(), inp=100, cost=0.1 + 0.01 * h)
                        for h in range(30)))
    await client.send(usage(t, (start + timedelta(hours=30, minutes=6)).isoformat(), inp=1, cost=0.0))

    forecasts = await client.wait_reports(t, "forecast", count=3)
    await asyncio.sleep(0.5)
    await client.reports.poll()
    latest = {r.window: r for r in client.all_reports(t, "forecast")}
    day = latest["24h"]
    assert day.history_points == 30 and day.confidence == 0.9
    assert day.lower_cost_usd is not None and day.upper_cost_usd is not None
    assert day.lower_cost_usd <= day.forecast_cost_usd <= day.upper_cost_usd  # type: ignore[operator]
    # An exact line (0.1 + 0.01 h): the next 24 h are 24 * 0.1 + 0.01 * (30 + ... + 53).
    assert day.forecast_cost_usd == pytest.approx(2.4 + 0.01 * sum(range(30, 54)))
    assert {"24h", "7d", "month"} <= {f.window for f in forecasts}
    assert latest["month"].window_end == datetime(2025, 4, 1, tzinfo=UTC)

    status, body = await client.get(f"/usage/{t}")
    assert status == 200, body
    view = json.loads(body)
    assert view["tenant"] == t
    assert view["forecast"]["24h"]["forecast_cost_usd"] == pytest.approx(day.forecast_cost_usd)
    assert view["latest"]["hour"]["window_start"].startswith("2025-03-11T05:00:00")
    assert view["open_windows"], "the hour and day still open are shown live"

    status, body = await client.get(f"/usage/nobody-{uuid.uuid4().hex[:6]}")
    assert status == 404 and b"no usage recorded" in body
    status, body = await client.get("/usage")
    assert status == 200 and t in json.loads(body)["tenants"]


async def test_budget_alerts_once_each_even_across_a_worker_restart(
    client: UsageClient, usage_stack: tuple[Stack, WorkerProcess]
) -> None:
    for cost in (0.5, 0.35, 0.1):  # 0.85 of a 1 USD month: the 80 % alert
        await client.send(usage(BUDGET_TENANT, "2025-03-05T10:00:00Z", cost=cost))
    first = await client.wait_reports(BUDGET_TENANT, "budget_alert", count=1)
    assert [(a.method, a.threshold, a.period) for a in first] == [("actual", 0.8, "month")]
    # The alert reports the spend when the batch that crossed 80 % was accounted: after the second event
    # (0.85) or, when all three arrive in one batch, after the third (0.95).
    assert first[0].budget_usd == 1.0
    assert first[0].spent_usd in (pytest.approx(0.85), pytest.approx(0.95)), first[0].spent_usd

    stack, worker = usage_stack
    worker.stop()
    restarted = stack.worker(app_id=worker.app_id, **{k: v for k, v in worker.extra_env.items()})
    restarted.wait_ready("usage")
    client.worker = restarted

    for cost in (0.1, 0.5):  # 1.05: the 100 % alert; 1.55: nothing new
        await client.send(usage(BUDGET_TENANT, "2025-03-05T10:30:00Z", cost=cost))
    await client.wait_reports(BUDGET_TENANT, "budget_alert", count=2)
    await client.send(usage(BUDGET_TENANT, "2025-03-05T10:40:00Z", cost=0.2))
    await asyncio.sleep(3)
    await client.reports.poll()
    alerts = client.all_reports(BUDGET_TENANT, "budget_alert")
    assert [(a.method, a.threshold) for a in alerts] == [("actual", 0.8), ("actual", 1.0)]


async def test_metrics_endpoint_parses_with_prometheus_client(client: UsageClient) -> None:
    t = f"metrics-{uuid.uuid4().hex[:8]}"
    await client.send(usage(t, "2025-03-01T10:00:00Z", inp=1234, out=56, cost=0.5),
                      usage(t, "2025-03-01T10:00:01Z", inp=1, out=1, cost=0.25))
    await client.send(usage(t, "2025-03-01T12:00:00Z", model="gpt-4o-mini", inp=1))
    await produce_raw(client.bootstrap, USAGE_EVENTS.name, [(t.encode(), b"not an event")])
    await client.wait_reports(t, "rollup", count=1)
    await client.dlq.wait_for(lambda r: r.key == t.encode(), timeout=30)

    status, body = await client.get("/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}

    def value(family: str, sample: str, **labels: str) -> float:
        found = [s.value for s in families[family].samples
                 if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, f"no {sample} with {labels}"
        return sum(found)

    assert value("soma_events_processed", "soma_events_processed_total", agent="usage", topic=USAGE_EVENTS.name) >= 3
    assert value("soma_usage_tokens", "soma_usage_tokens_total", tenant=t, model="gpt-4o", type="input") == 1235
    assert value("soma_usage_cost_usd", "soma_usage_cost_usd_total", tenant=t, model="gpt-4o") == pytest.approx(0.75)
    assert value("soma_usage_events", "soma_usage_events_total", outcome="accepted") >= 3
    assert value("soma_event_latency_seconds", "soma_event_latency_seconds_count", agent="usage") >= 3
    assert value("soma_batch_duration_seconds", "soma_batch_duration_seconds_count", agent="usage") >= 1
    lag = [s for s in families["soma_consumer_lag"].samples if s.labels.get("agent") == "usage"]
    assert {s.labels["partition"] for s in lag} == {"0", "1", "2", "3"}
    assert all(s.value >= 0 for s in lag)
    assert value("soma_usage_windows_closed", "soma_usage_windows_closed_total", size="hour") >= 1
    assert value("soma_events_failed", "soma_events_failed_total", agent="usage", topic=USAGE_EVENTS.name) >= 1
    assert value("soma_dlq_messages", "soma_dlq_messages_total", agent="usage", topic=USAGE_EVENTS.dlq,
                 error_class="DecodeError") >= 1


async def test_idle_tenant_windows_close_by_the_wall_clock(
    tmp_path: Path, redis_url: str
) -> None:
    stack = Stack(start_broker(tmp_path), redis_url, tmp_path)
    try:
        worker = stack.worker(SOMA_USAGE_IDLE_CLOSE_SECONDS="1", SOMA_USAGE_TICK_SECONDS="0.5")
        worker.wait_ready("usage")
        reports = await TopicReader(stack.bootstrap, USAGE_REPORTS.name).start()
        try:
            now = datetime.now(UTC)
            await produce_raw(stack.bootstrap, USAGE_EVENTS.name, [
                (b"idle", encode_event(usage("idle", (now - timedelta(hours=2)).isoformat(), inp=7, cost=0.1)))
            ])
            records = await reports.wait_for(
                lambda r: (e := decode_event(r.value or b"", UsageReport)).report == "rollup" and e.window == "hour"
                and e.provider is None, timeout=30,
            )
            hour = decode_event(records[0].value or b"", UsageReport)
            assert (hour.tenant, hour.input_tokens, hour.events) == ("idle", 7, 1)
        finally:
            await reports.stop()
    finally:
        stack.close()
