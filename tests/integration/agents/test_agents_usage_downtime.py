"""Downtime is not lateness: a usage backlog of hours, read after the worker was down, is counted in its
windows (real broker, real worker processes; checked through Kafka and the worker's HTTP view).

While the backlog is read, a tenant whose next event is still unread looks silent; if the idle rule
moved its clock to the wall clock then, the rest of its backlog would be dead-lettered as late. The
worker here runs the idle rule as eagerly as the settings allow (50 ms of silence, a tick every 50 ms,
20 records a batch), and a sparse tenant shares its partition with a dense one, so the sparse tenant
is "silent" for many batches at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.broker import free_port
from schemas import UsageEvent, UsageReport, decode_event, encode_event
from streams.catalog import USAGE_EVENTS, USAGE_REPORTS
from streams.dlq import parse_dlq_headers
from streams.web import partition_for
from tests.integration.conftest import Stack
from tests.support.stack import TopicReader, produce_raw, start_broker

pytestmark = pytest.mark.integration

PARTITIONS = 4
EAGER_IDLE = {
    "SOMA_USAGE_IDLE_CLOSE_SECONDS": "0.05",
    "SOMA_USAGE_TICK_SECONDS": "0.05",
    "SOMA_BATCH_MAX_RECORDS": "20",
}


def same_partition_tenants(count: int) -> list[str]:
    """``count`` fresh tenant names that the default partitioner puts on one partition."""
    first = f"dense-{uuid.uuid4().hex[:8]}"
    target = partition_for(first.encode(), PARTITIONS)
    names = [first]
    while len(names) < count:
        name = f"sparse-{uuid.uuid4().hex[:8]}"
        if partition_for(name.encode(), PARTITIONS) == target:
            names.append(name)
    return names


def hour_of(moment: datetime) -> str:
    return moment.replace(minute=0, second=0, microsecond=0).isoformat()


def http_json(port: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_a_three_hour_backlog_after_downtime_is_counted_in_its_windows(tmp_path: Path, redis_url: str) -> None:
    stack = Stack(start_broker(tmp_path), redis_url, tmp_path)
    reports = dlq = None
    try:
        first = stack.worker(**EAGER_IDLE)
        first.wait_ready("usage")
        first.stop()  # the downtime starts

        # Three hours of event time, up to now: a dense tenant every 5 s, a sparse one every 10 min, on one
        # partition, in time order (as producers would have sent them while the worker was down).
        dense, sparse = same_partition_tenants(2)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(hours=3)
        events = [UsageEvent(event_id=str(uuid.uuid4()), tenant=dense, occurred_at=start + timedelta(seconds=s),
                             provider="openai", model="gpt-4o", kind="chat", input_tokens=1 + s % 7, cost_usd=0.001)
                  for s in range(0, 3 * 3600, 5)]
        events += [UsageEvent(event_id=str(uuid.uuid4()), tenant=sparse, occurred_at=start + timedelta(minutes=m),
                              provider="openai", model="gpt-4o", kind="chat", input_tokens=1000 + m, cost_usd=0.01)
                   for m in range(0, 3 * 60, 10)]
        events.sort(key=lambda e: e.occurred_at)
        reference: Counter[tuple[str, str]] = Counter()
        tokens: Counter[tuple[str, str]] = Counter()
        for e in events:
            reference[(e.tenant, hour_of(e.occurred_at))] += 1
            tokens[(e.tenant, hour_of(e.occurred_at))] += e.input_tokens
        await produce_raw(stack.bootstrap, USAGE_EVENTS.name, [(e.tenant.encode(), encode_event(e)) for e in events])

        port = str(free_port())
        second = stack.worker(app_id=first.app_id, SOMA_WEB_PORT=port, **EAGER_IDLE)  # the downtime ends
        second.wait_ready("usage")
        reports = await TopicReader(stack.bootstrap, USAGE_REPORTS.name).start()
        dlq = await TopicReader(stack.bootstrap, USAGE_EVENTS.dlq).start()

        def counted() -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
            """Per (tenant, hour): events and input tokens in closed rollups plus open windows."""
            events_seen: Counter[tuple[str, str]] = Counter()
            tokens_seen: Counter[tuple[str, str]] = Counter()
            rollups = {r.event_id: r for r in (decode_event(c.value or b"", UsageReport) for c in reports.seen)
                       if r.report == "rollup" and r.window == "hour" and r.provider is None}
            for r in rollups.values():
                assert r.window_start is not None
                events_seen[(r.tenant, r.window_start.isoformat())] += r.events
                tokens_seen[(r.tenant, r.window_start.isoformat())] += r.input_tokens
            for tenant in (dense, sparse):
                status, body = http_json(port, f"/usage/{tenant}")
                if status != 200:
                    continue
                for window in body["open_windows"]:
                    if window["window"] != "hour":
                        continue
                    hour = datetime.fromisoformat(window["window_start"].replace("Z", "+00:00")).isoformat()
                    for group in window["groups"]:
                        events_seen[(tenant, hour)] += group["events"]
                        tokens_seen[(tenant, hour)] += group["input_tokens"]
            return events_seen, tokens_seen

        def closed_hours(tenant: str) -> set[Any]:
            return {r.window_start for r in (decode_event(c.value or b"", UsageReport) for c in reports.seen)
                    if r.tenant == tenant and r.report == "rollup" and r.window == "hour" and r.provider is None}

        deadline = time.monotonic() + 180
        while True:
            await reports.poll()
            await dlq.poll()
            events_seen, tokens_seen = await asyncio.to_thread(counted)
            if (events_seen == reference and len(closed_hours(sparse)) >= 2) or dlq.seen \
                    or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # anything dead-lettered meanwhile
        await dlq.poll()
        reasons = [parse_dlq_headers(record.headers).error_message for record in dlq.seen]
        assert reasons == [], f"{len(reasons)} events dead-lettered, e.g. {reasons[:2]}"
        assert events_seen == reference
        assert tokens_seen == tokens
        # The idle rule still works once the worker has caught up: the sparse tenant's clock moved to the
        # wall clock, closing (at least) the two hours that ended more than the grace period ago.
        assert len(closed_hours(sparse)) >= 2
    finally:
        for reader in (reports, dlq):
            if reader is not None:
                await reader.stop()
        stack.close()
