"""The Quix Streams contestant of ``tests.perf.bench_usage``: the same usage rollups as a Quix pipeline.

It runs in its own virtualenv (``.venv-bench``, made by ``make bench-usage``): quixstreams 3.28 pins
``pydantic<2.14`` while the project needs ``>=2.14``, so the two cannot share one environment. It
therefore imports nothing of the project but the price table (:mod:`agents.usage.pricing`, standard library
only) and reads the Avro events with fastavro and the project's ``.avsc`` directly — less work per
event than our agent's pydantic validation, which makes the comparison conservative for us.

Pipeline: Avro value → dedupe on ``event_id`` (per-key state) → cost (reported or priced) → two
branches, hourly and daily tumbling windows on event time (``occurred_at``) keyed by tenant, reducing
into sums per provider/model/kind, ``.final()`` (emitted when the window closes: end + grace), one
JSON rollup per group to the output topic.

The embedded broker does not report ``retention.ms`` in its topic configs, which Quix needs to derive
its changelog topics' configs; the input topic's broker config gets it supplied (7 days) below.

Environment: ``QUIX_BOOTSTRAP``, ``QUIX_GROUP``, ``QUIX_INPUT_TOPIC``, ``QUIX_OUTPUT_TOPIC``,
``QUIX_STATE_DIR``, ``QUIX_GRACE_MS``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader
from quixstreams import Application, State
from quixstreams.models.serializers import Deserializer

from agents.usage.pricing import PriceTable

BOOTSTRAP = os.environ.get("QUIX_BOOTSTRAP", "127.0.0.1:9092")
GROUP = os.environ.get("QUIX_GROUP", "quix-usage")
INPUT_TOPIC = os.environ.get("QUIX_INPUT_TOPIC", "quix.usage.events")
OUTPUT_TOPIC = os.environ.get("QUIX_OUTPUT_TOPIC", "quix.usage.reports")
STATE_DIR = os.environ.get("QUIX_STATE_DIR", "./data/quix-usage")
GRACE_MS = int(os.environ.get("QUIX_GRACE_MS", "300000"))
RETENTION_MS = str(7 * 86_400_000)

SCHEMA = parse_schema(json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "avro" / "usage_event.v1.avsc").read_text()
))
prices = PriceTable.load()


class AvroUsageEvent(Deserializer):
    """Confluent-framed Avro (5-byte header) → dict, with ``occurred_at`` as epoch ms."""

    def __call__(self, value: bytes, ctx: Any) -> Any:
        body = BytesIO(value)
        body.seek(5)
        record: dict[str, Any] = schemaless_reader(body, SCHEMA)  # type: ignore[assignment, call-arg]
        record["occurred_at"] = int(record["occurred_at"].timestamp() * 1000)
        return record


def first_time(value: dict[str, Any], state: State) -> bool:
    if state.get(value["event_id"]) is not None:
        return False
    state.set(value["event_id"], 1)
    return True


def with_cost(value: dict[str, Any]) -> dict[str, Any]:
    cost = value["cost_usd"]
    if cost is None:
        cost = prices.cost(value["model"], value["input_tokens"], value["output_tokens"],
                           value["cached_tokens"]) or 0.0
    return {"group": f'{value["provider"]}|{value["model"]}|{value["kind"]}', "input": value["input_tokens"],
            "output": value["output_tokens"], "cached": value["cached_tokens"], "cost": cost}


def reduce_group(sums: dict[str, list[float]], value: dict[str, Any]) -> dict[str, list[float]]:
    current = sums.get(value["group"])
    if current is None:
        sums[value["group"]] = [value["input"], value["output"], value["cached"], 1, value["cost"]]
    else:
        current[0] += value["input"]
        current[1] += value["output"]
        current[2] += value["cached"]
        current[3] += 1
        current[4] += value["cost"]
    return sums


def first_group(value: dict[str, Any]) -> dict[str, list[float]]:
    return reduce_group({}, value)


def rollups(size: str) -> Any:
    def explode(window: dict[str, Any], key: Any, timestamp: int, headers: Any) -> list[dict[str, Any]]:
        tenant = key.decode() if isinstance(key, bytes) else key
        rows = []
        for group, (inp, out, cached, events, cost) in window["value"].items():
            provider, model, kind = group.split("|")
            rows.append({"tenant": tenant, "window": size, "window_start": window["start"], "provider": provider,
                         "model": model, "kind": kind, "input_tokens": inp, "output_tokens": out,
                         "cached_tokens": cached, "events": events, "cost_usd": cost})
        return rows

    return explode


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app = Application(
        broker_address=BOOTSTRAP,
        consumer_group=GROUP,
        auto_offset_reset="earliest",
        state_dir=STATE_DIR,
        loglevel="WARNING",
    )
    events = app.topic(INPUT_TOPIC, key_deserializer="str", value_deserializer=AvroUsageEvent(),
                       timestamp_extractor=lambda value, headers, ts, kind: value["occurred_at"])
    # The embedded broker does not report retention.ms; Quix derives its changelog configs from it.
    events.broker_config.extra_config.setdefault("retention.ms", RETENTION_MS)
    reports = app.topic(OUTPUT_TOPIC, key_serializer="str", value_serializer="json")

    sdf = app.dataframe(events)
    sdf = sdf.filter(first_time, stateful=True).apply(with_cost)
    for size, length in (("hour", timedelta(hours=1)), ("day", timedelta(days=1))):
        window = sdf.tumbling_window(length, grace_ms=GRACE_MS, name=f"usage-{size}")
        # Quix stamps a window's result with the window start; stamp it with the time it is produced
        # instead, like the other contestants (the benchmark measures output CreateTimes).
        window.reduce(reduce_group, first_group).final() \
            .apply(rollups(size), expand=True, metadata=True) \
            .set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000)) \
            .to_topic(reports)
    app.run()


if __name__ == "__main__":
    main()
