"""The naive Faust baseline of ``tests.perf.bench_usage``: usage rollups the plain Faust way.

One ``@app.agent`` over the usage topic, ``async for event in stream.events()``, Faust tables for the
seen event ids, the open windows' sums and each tenant's event-time clock, and one
``await out_topic.send(...)`` per closed window. Same rules as the bench's other contestants: dedupe
by ``event_id``, cost reported or from the real price table (:mod:`agents.usage.pricing`), hourly and daily
tumbling windows per tenant × provider × model × kind on event time, closed when the tenant's clock
passes the window end + ``NAIVE_GRACE_MS``, one ``UsageReport`` rollup (Avro) per closed window.

Run by the benchmark as ``python -m faust -A tests.perf.naive_usage_app worker -l warn`` with
``NAIVE_BOOTSTRAP``, ``NAIVE_APP_ID``, ``NAIVE_INPUT_TOPIC``, ``NAIVE_OUTPUT_TOPIC``, ``NAIVE_DATA_DIR``,
``NAIVE_PARTITIONS`` and ``NAIVE_GRACE_MS``.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import faust

# The price table and the schemas first (they load ``faust_app``, which creates the project's App);
# creating ours afterwards keeps ours the "current" Faust app.
from agents.usage.pricing import PriceTable
from schemas import UsageEvent, UsageReport, decode_event, encode_event

BOOTSTRAP = os.environ.get("NAIVE_BOOTSTRAP", "127.0.0.1:9092")
APP_ID = os.environ.get("NAIVE_APP_ID", "naive-usage")
INPUT_TOPIC = os.environ.get("NAIVE_INPUT_TOPIC", "naive.usage.events")
OUTPUT_TOPIC = os.environ.get("NAIVE_OUTPUT_TOPIC", "naive.usage.reports")
DATA_DIR = os.environ.get("NAIVE_DATA_DIR", "./data/naive-usage")
PARTITIONS = int(os.environ.get("NAIVE_PARTITIONS", "4"))
GRACE_MS = int(os.environ.get("NAIVE_GRACE_MS", "300000"))
DEDUPE_TTL_MS = 7 * 86_400_000
SIZES = {"hour": 3_600_000, "day": 86_400_000}

app = faust.App(
    APP_ID,
    broker=f"kafka://{BOOTSTRAP}",
    store="rocksdb://",
    datadir=DATA_DIR,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    broker_rebalance_timeout=3,
    broker_session_timeout=10,
    broker_heartbeat_interval=1,
    web_enabled=False,
)

events_topic = app.topic(INPUT_TOPIC, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
reports_topic = app.topic(OUTPUT_TOPIC, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")

#: event id -> epoch ms until which it is remembered
seen = app.Table("seen", default=None, partitions=PARTITIONS, key_type=str)
#: "tenant|provider|model|kind|size|start" -> [input, output, cached, events, cost]
windows = app.Table("windows", default=None, partitions=PARTITIONS, key_type=str)
#: tenant -> {"wm": event-time clock, "open": [window keys]}
clocks = app.Table("clocks", default=None, partitions=PARTITIONS, key_type=str)

prices = PriceTable.load()


@app.agent(events_topic)
async def naive_usage(stream: Any) -> None:
    async for message in stream.events():
        event = decode_event(message.value, UsageEvent)
        if seen.get(event.event_id) is not None:
            continue
        seen[event.event_id] = int(time.time() * 1000) + DEDUPE_TTL_MS
        cost = event.cost_usd
        if cost is None:
            cost = prices.cost(event.model, event.input_tokens, event.output_tokens, event.cached_tokens) or 0.0
        ts = int(event.occurred_at.timestamp() * 1000)
        tenant = event.tenant
        clock = clocks.get(tenant) or {"wm": 0, "open": []}
        for size, length in SIZES.items():
            key = f"{tenant}|{event.provider}|{event.model}|{event.kind}|{size}|{ts - ts % length}"
            sums = windows.get(key) or [0, 0, 0, 0, 0.0]
            windows[key] = [sums[0] + event.input_tokens, sums[1] + event.output_tokens,
                            sums[2] + event.cached_tokens, sums[3] + 1, sums[4] + cost]
            if key not in clock["open"]:
                clock["open"].append(key)
        clock["wm"] = max(clock["wm"], ts)
        for key in list(clock["open"]):
            _, provider, model, kind, size, start_text = key.split("|")
            start = int(start_text)
            if start + SIZES[size] + GRACE_MS > clock["wm"]:
                continue
            sums = windows.pop(key)
            clock["open"].remove(key)
            report = UsageReport(
                tenant=tenant, report="rollup", window=size, provider=provider, model=model, kind=kind,
                window_start=datetime.fromtimestamp(start / 1000, UTC),
                window_end=datetime.fromtimestamp((start + SIZES[size]) / 1000, UTC),
                input_tokens=sums[0], output_tokens=sums[1], cached_tokens=sums[2], events=sums[3],
                cost_usd=sums[4],
            )
            await reports_topic.send(key=tenant.encode(), value=encode_event(report))
        clocks[tenant] = clock
