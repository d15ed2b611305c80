"""A changelog restore that fails is retried and reported, and the partition is processed once it succeeds.

The worker restores with ``SOMA_RESTORE_TIMEOUT_SECONDS`` far below what reading its changelog takes,
so every attempt stops after its first fetch (the real timeout path, on the real embedded broker):
the partition must be listed by ``/readyz`` (503) and counted in ``soma_restore_failures_total`` while
the attempts fail, the error logged, each retry must resume where the last stopped, and once the end
is reached the partition's commands must be answered from the restored state.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from connectors.broker import free_port
from streams.catalog import all_topics
from streams.web import partition_for
from tests.integration.conftest import LockClient, Stack
from tests.perf.common import create_topics

PARTITIONS = 4
ADMIN = {"user": "ann", "roles": ["admin"]}
#: Three fetches' worth of seen ids (the restore applies at most 2,000 records per fetch): with a tiny
#: timeout the restore needs several attempts.
SEEN_IDS = 7_000


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


async def test_a_failing_restore_is_retried_reported_and_the_partition_processed_after(
    stack_factory: Any, lock_client_factory: Any
) -> None:
    stack: Stack = stack_factory()
    app_id = f"t{uuid.uuid4().hex[:10]}"
    tenant = "restore-retried"
    partition = partition_for(tenant.encode(), PARTITIONS)
    changelog = f"{app_id}.locks.seen.changelog"
    await create_topics(stack.bootstrap, [
        *all_topics(PARTITIONS, 1),
        NewTopic(changelog, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact", "retention.ms": "-1"}),
    ])
    expires = json.dumps(int(time.time() * 1000) + 3_600_000).encode()
    seen_ids = [str(uuid.uuid4()) for _ in range(SEEN_IDS)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(changelog, expires, key=event_id.encode(), partition=partition)
                for event_id in seen_ids]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    port = free_port()
    worker = stack.worker(app_id=app_id, SOMA_WEB_PORT=str(port), SOMA_RESTORE_TIMEOUT_SECONDS="0.001")
    readyz = f"http://127.0.0.1:{port}/readyz"

    # While the attempts time out: 503 naming the agent and the partition, with the reason.
    failing: dict[str, Any] | None = None
    deadline = time.monotonic() + 90
    while failing is None and time.monotonic() < deadline:
        assert worker.process is not None and worker.process.poll() is None, worker.tail_log()
        status, body = await asyncio.to_thread(_get, readyz)
        if status == 503:
            for entry in json.loads(body).get("restoring", []):
                if entry["agent"] == "locks" and entry["partition"] == partition and entry["state"] == "retrying":
                    failing = entry
        await asyncio.sleep(0.1)
    assert failing is not None, f"/readyz never named locks[{partition}] as retrying:\n{worker.tail_log()}"
    assert "RangeReadError" in failing["error"] and failing["attempts"] >= 1

    # The retries resume where the last attempt stopped, so the restore ends and the worker is ready.
    deadline = time.monotonic() + 120
    status, body = 0, ""
    while status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        status, body = await asyncio.to_thread(_get, readyz)
    assert status == 200, f"/readyz still {status} {body}:\n{worker.tail_log()}"
    assert partition in json.loads(body)["partitions"]["locks"]

    _, metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    failures = [line for line in metrics.splitlines() if line.startswith('soma_restore_failures_total{agent="locks"}')]
    assert failures and float(failures[0].split()[-1]) >= 1, metrics[-2000:]
    log = worker.log_path.read_text(errors="replace") if worker.log_path else ""
    assert "agent locks: restoring partitions" in log and "failed (attempt" in log

    # The partition is processed, from the restored table: a seen id from the changelog is a duplicate.
    client: LockClient = await lock_client_factory(stack.bootstrap)
    granted = await client.ask({"tenant": tenant, "action": "enable", "ttl_seconds": 600, **ADMIN}, timeout=60)
    assert granted.status == "active" and granted.fencing_token == 1
    await client.send_raw(tenant.encode(), json.dumps({
        "event_id": seen_ids[42], "tenant": tenant, "action": "disable", **ADMIN,
    }).encode())
    status_event = await client.ask({"tenant": tenant, "action": "status", "user": "viewer"})
    assert status_event.status == "active", "the id was restored as seen: its disable is a duplicate"
