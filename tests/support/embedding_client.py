"""A client of the embedding agent for tests and benchmarks: sends jobs, waits for their results.

It talks to the worker only through Kafka (the worker owns Qdrant local mode; nothing else may open it
while the worker runs): jobs to ``soma.embedding.jobs``, answers from ``soma.embedding.results``, usage
from ``soma.usage.events``, rejected bytes from ``soma.embedding.jobs.dlq``.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import EmbeddingJob, EmbeddingResult, UsageEvent, decode_event, encode_event, new_event_id
from streams.catalog import EMBEDDING_JOBS, EMBEDDING_RESULTS, USAGE_EVENTS
from tests.support.stack import Consumed, TopicReader, produce_raw


class EmbeddingClient:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.results = TopicReader(bootstrap, EMBEDDING_RESULTS.name)
        self.usage = TopicReader(bootstrap, USAGE_EVENTS.name)
        self.dlq = TopicReader(bootstrap, EMBEDDING_JOBS.dlq)

    async def start(self) -> EmbeddingClient:
        for reader in (self.results, self.usage, self.dlq):
            await reader.start()
        return self

    async def stop(self) -> None:
        for reader in (self.results, self.usage, self.dlq):
            await reader.stop()

    async def send(self, *jobs: dict[str, Any]) -> list[str]:
        """Send jobs (Avro, keyed by tenant) in one produce; returns their event ids."""
        ids, messages = [], []
        for payload in jobs:
            job = EmbeddingJob.model_validate({"event_id": new_event_id(), **payload})
            ids.append(job.event_id)
            messages.append((job.tenant.encode(), encode_event(job)))
        await produce_raw(self.bootstrap, EMBEDDING_JOBS.name, messages)
        return ids

    async def send_json(self, payload: dict[str, Any], key: bytes | None = None) -> None:
        """Send a raw JSON object, valid or not (bad input tests)."""
        await produce_raw(self.bootstrap, EMBEDDING_JOBS.name, [(key, json.dumps(payload).encode())])

    async def result(self, job_id: str, timeout: float = 60.0) -> EmbeddingResult:
        records = await self.results.wait_for(lambda r: _result(r).job_id == job_id, timeout=timeout)
        return _result(records[0])

    async def ask(self, payload: dict[str, Any], timeout: float = 60.0) -> EmbeddingResult:
        (job_id,) = await self.send(payload)
        return await self.result(job_id, timeout)

    def answers(self, job_id: str) -> list[EmbeddingResult]:
        return [result for result in map(_result, self.results.seen) if result.job_id == job_id]

    async def usage_of(self, job_id: str, timeout: float = 30.0) -> UsageEvent:
        records = await self.usage.wait_for(lambda r: _usage(r).source_event_id == job_id, timeout=timeout)
        return _usage(records[0])

    async def dead_letter(self, job_id: str, timeout: float = 30.0) -> Consumed:
        def matches(record: Consumed) -> bool:
            try:
                return decode_event(record.value or b"", EmbeddingJob).event_id == job_id
            except Exception:
                return job_id.encode() in (record.value or b"")

        records = await self.dlq.wait_for(matches, timeout=timeout)
        return records[0]


def _result(record: Consumed) -> EmbeddingResult:
    return decode_event(record.value or b"", EmbeddingResult)


def _usage(record: Consumed) -> UsageEvent:
    return decode_event(record.value or b"", UsageEvent)
