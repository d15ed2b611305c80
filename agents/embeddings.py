"""The embedding agent: upsert, delete and search jobs against the tenant's semantic memory.

Jobs arrive on ``soma.embedding.jobs`` (keyed by tenant, so one tenant's jobs keep their order); each
gets exactly one :class:`~schemas.EmbeddingResult` on ``soma.embedding.results`` — ``ok`` with its
counts / hits, or ``failed`` with the reason, in which case the job's original bytes also go to
``soma.embedding.jobs.dlq``. Every job whose texts were embedded also yields a
:class:`~schemas.UsageEvent` (``kind="embedding"``, the tokens of its texts) on ``soma.usage.events``.

A batch is worked in three steps:

1. **Plan** each job (:meth:`agents.memory.Memory.plan`): validate it and cut its documents into
   chunks. A job that breaks a rule (empty text, a document over ``SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS``,
   a bad filter or collection name) fails here, before anything is computed.
2. **Embed** the texts of *all* jobs of the batch together — chunks of upserts, queries of searches —
   in model-sized batches of ``SOMA_EMBEDDINGS_BATCH_SIZE`` (batching across jobs: a hundred one-line
   upserts cost a couple of model calls, not a hundred). The local model runs in a worker thread, so
   the event loop keeps the consumer's heartbeats going. If an OpenAI-compatible endpoint rejects the
   combined request, each job is embedded on its own so one bad job cannot fail the others.
3. **Apply** the jobs to Qdrant in their order (a delete after an upsert of the same document must
   win). Consecutive upserts to one collection are written with one upsert call.

Counts: ``upserted`` is the number of chunks (points) written, ``deleted`` the number of points
removed — by a delete job, or the surplus chunks of documents an upsert made shorter. ``latency_ms``
is the time from the moment the worker took the job's batch to its result. Failures of Qdrant or of
the embeddings endpoint are retried by the connectors (with backoff and a circuit breaker); a job that
still fails is answered ``failed`` and dead-lettered, so it can be re-driven from the DLQ.

The local model is loaded by the first job that needs it (once per process; most of it is
importing torch) rather than at worker start: a worker that never embeds never pays for torch.

Duplicates: a job whose ``event_id`` succeeded before is skipped without a second answer (a table of
seen ids per partition, kept ``SOMA_DEDUPE_TTL_SECONDS``). Failed jobs are not remembered, so a job
re-driven from the DLQ with its original id runs again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agents.exceptions import JobRejected
from agents.memory import JobPlan, Memory, shared_memory
from connectors.exceptions import ConnectorError, EmbeddingsRequestError
from schemas import EmbeddingJob, EmbeddingResult, Hit, SchemaError, UsageEvent, caused_by, derived_event_id
from streams.catalog import EMBEDDING_JOBS, EMBEDDING_RESULTS, USAGE_EVENTS
from streams.engine import AgentContext, Batch, BatchStream, Record, Resources, agent
from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.settings import Settings

__all__ = ["embedding_agent", "failure_reason"]

logger = logging.getLogger(__name__)



@dataclass(slots=True)
class _Work:
    """One job of the batch on its way through plan → embed → apply."""

    record: Record[EmbeddingJob]
    plan: JobPlan
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int | None = None
    embedded: bool = False
    error: BaseException | None = None
    upserted: int = 0
    deleted: int = 0
    hits: list[Hit] = field(default_factory=list)

    @property
    def job(self) -> EmbeddingJob:
        return self.plan.job


class EmbeddingContext(AgentContext):
    """What one run of the embedding agent holds: the process's memory and the dedupe ids."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self.memory: Memory = shared_memory(self)
        self.seen = SeenIds(settings.dedupe_ttl_seconds * 1000)
        self.duplicates = 0


def failure_reason(exc: BaseException) -> str:
    """The sentence a requester reads in a ``failed`` result (and operators in the DLQ header)."""
    if isinstance(exc, JobRejected):
        return exc.reason
    if isinstance(exc, ConnectorError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def _reply_invalid(batch: Batch[EmbeddingJob], record: Record[EmbeddingJob], error: SchemaError) -> None:
    """Answer a job that failed validation, when its JSON says who asked and which job it was."""
    payload = record.readable_fields("tenant", "event_id")
    if payload is None:
        return
    tenant, event_id = payload["tenant"], payload["event_id"]
    try:
        result = EmbeddingResult(tenant=tenant, job_id=event_id, status="failed", causation_id=event_id,
                                 correlation_id=payload.get("correlation_id") or event_id,
                                 error=f"invalid job: {error.reason}")
    except Exception:
        return  # the tenant itself is malformed: the DLQ entry is the only answer
    batch.emit(EMBEDDING_RESULTS.name, tenant, result)


@agent(
    "embeddings",
    topic=EMBEDDING_JOBS,
    tables=(SEEN_TABLE,),
    context=EmbeddingContext,
    on_invalid=_reply_invalid,
    max_records=lambda settings: settings.embeddings_max_jobs_per_batch,
)
async def embedding_agent(stream: BatchStream[EmbeddingJob], state: EmbeddingContext) -> None:
    """Plan, embed (across jobs) and apply each batch of embedding jobs; answer every job."""
    async for batch in stream:
        await process_batch(batch, state)


async def process_batch(batch: Batch[EmbeddingJob], state: EmbeddingContext) -> None:
    started = time.perf_counter()
    memory = state.memory
    works: list[_Work] = []
    taken: set[str] = set()  # a job sent twice may arrive twice in one batch
    for record in batch:
        job = record.event
        if job.event_id in taken or state.seen.contains(batch, job.event_id, record.partition):
            state.duplicates += 1
            logger.info("duplicate embedding job %s ignored", job.event_id)
            continue
        taken.add(job.event_id)
        try:
            plan = memory.plan(job)
        except Exception as exc:
            _fail(batch, record, exc, started)
            continue
        works.append(_Work(record, plan))
    if works:
        await _embed(works, memory)
        await _apply(works, memory)
    for work in works:
        try:
            _answer(batch, work, memory, started)
        except Exception as exc:
            # An answer that cannot be built (a dependency's value outside the contract): this job
            # fails with the reason, the batch and the agent go on.
            work.error = exc
            _fail(batch, work.record, exc, started)
        if work.error is None:
            state.seen.add(batch, work.job.event_id, work.record.partition)
    state.seen.sweep(batch)


async def _embed(works: list[_Work], memory: Memory) -> None:
    """Embed the texts of all jobs together; fall back to one call per job if the endpoint rejects it."""
    pending = [work for work in works if work.plan.texts]
    if not pending:
        return
    texts = [text for work in pending for text in work.plan.texts]
    started = time.perf_counter()
    try:
        embeddings = await memory.embedder.embed(texts)
    except EmbeddingsRequestError as exc:
        if len(pending) == 1:
            pending[0].error = exc
            return
        logger.warning("embeddings endpoint rejected %d texts of %d jobs (%s); embedding job by job",
                       len(texts), len(pending), exc)
        for work in pending:
            try:
                _take(work, await memory.embedder.embed(work.plan.texts), 0)
            except Exception as job_exc:
                work.error = job_exc
        return
    except Exception as exc:
        for work in pending:
            work.error = exc
        return
    batch_size = memory.embedder.batch_size
    logger.info("embedded %d texts of %d jobs in %d model batches of up to %d in %.0f ms", len(texts), len(pending),
                -(-len(texts) // batch_size), batch_size, (time.perf_counter() - started) * 1000)
    offset = 0
    for work in pending:
        _take(work, embeddings, offset)
        offset += len(work.plan.texts)


def _take(work: _Work, embeddings: Any, offset: int) -> None:
    count = len(work.plan.texts)
    work.vectors = embeddings.vectors[offset:offset + count]
    work.tokens = None if embeddings.tokens is None else sum(embeddings.tokens[offset:offset + count])
    work.embedded = True


async def _apply(works: list[_Work], memory: Memory) -> None:
    """Run the jobs against Qdrant in order; consecutive upserts to one collection go in one call."""
    ready = [work for work in works if work.error is None]
    index = 0
    while index < len(ready):
        work = ready[index]
        job = work.job
        if job.job == "upsert":
            run = [work]
            while (index + len(run) < len(ready) and ready[index + len(run)].job.job == "upsert"
                   and ready[index + len(run)].job.collection == job.collection):
                run.append(ready[index + len(run)])
            await _upsert(run, memory)
            index += len(run)
            continue
        try:
            if job.job == "search":
                work.hits = await memory.search(job.tenant, job.collection, work.vectors[0], job.top_k,
                                                work.plan.condition, job.score_threshold)
            else:
                work.deleted = await memory.delete(job.tenant, job.collection, job.doc_ids, work.plan.condition)
        except Exception as exc:
            work.error = exc
        index += 1


async def _upsert(run: list[_Work], memory: Memory) -> None:
    items = []
    owners: list[_Work] = []
    for work in run:
        offset = 0
        for document in work.plan.documents:
            count = len(document.chunks)
            items.append((work.job.tenant, document, work.vectors[offset:offset + count]))
            owners.append(work)
            offset += count
    try:
        _, deleted = await memory.write(run[0].job.collection, items)
    except Exception as exc:
        for work in run:
            work.error = exc
        return
    for work in run:
        work.upserted = sum(len(document.chunks) for document in work.plan.documents)
    for owner, count in zip(owners, deleted, strict=True):
        owner.deleted += count


def _answer(batch: Batch[EmbeddingJob], work: _Work, memory: Memory, started: float) -> None:
    job = work.job
    latency_ms = (time.perf_counter() - started) * 1000.0
    if work.embedded and work.tokens is not None:
        usage = UsageEvent(**caused_by(job), event_id=derived_event_id(job.event_id, "usage:embedding"),
                           provider=memory.embedder.provider, model=memory.embedder.model,
                           kind="embedding", input_tokens=work.tokens, latency_ms=latency_ms,
                           source_event_id=job.event_id)
        batch.emit(USAGE_EVENTS.name, job.tenant, usage)
    if work.error is not None:
        _fail(batch, work.record, work.error, started)
        return
    result = EmbeddingResult(**caused_by(job), event_id=derived_event_id(job.event_id, "result"), job_id=job.event_id,
                             status="ok", upserted=work.upserted,
                             deleted=work.deleted, hits=work.hits, latency_ms=latency_ms)
    batch.emit(EMBEDDING_RESULTS.name, job.tenant, result)


def _fail(batch: Batch[EmbeddingJob], record: Record[EmbeddingJob], exc: BaseException, started: float) -> None:
    """A ``failed`` result with the reason, and the job's bytes to the DLQ."""
    job = record.event
    reason = failure_reason(exc)
    logger.warning("embedding job %s (%s, tenant %s) failed: %s", job.event_id, job.job, job.tenant, reason)
    batch.dead_letter(record, exc)  # headers: the error's class and message
    batch.emit(EMBEDDING_RESULTS.name, job.tenant, EmbeddingResult(
        **caused_by(job), event_id=derived_event_id(job.event_id, "result"), job_id=job.event_id,
        status="failed", error=reason,
        latency_ms=(time.perf_counter() - started) * 1000.0,
    ))

