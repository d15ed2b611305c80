"""Records, batches, and the batch stream an agent iterates over.

An agent is a small async function over a :class:`BatchStream`::

    @agent("locks", topic=LOCK_COMMANDS, tables=("locks",))
    async def locks(stream: BatchStream[LockCommand]) -> None:
        async for batch in stream:
            for record in batch:
                ...

Asking for the next batch is the acknowledgement of the previous one: the stream then sends what the
agent produced, makes its table writes durable, and commits the input offsets — in that order, so an
effect is never committed before it is durable. Records that could not be decoded never reach the
agent: they go to the dead-letter topic with their reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from schemas import Envelope, SchemaError, encode_event
from schemas.codec import read_json_object
from streams.dlq import DeadLetter, dlq_headers
from streams.engine.outbox import Outbox
from streams.engine.state import Table

if TYPE_CHECKING:
    from streams.engine.runner import AgentRunner

__all__ = ["Batch", "BatchStream", "Record"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Envelope)


@dataclass(slots=True)
class Record(Generic[E]):
    """One input message and, once decoded, its event."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    event: E = field(default=None)  # type: ignore[assignment]

    def readable_fields(self, *required: str) -> dict[str, Any] | None:
        """The value as a JSON object when it names each of ``required`` as a non-empty string, else None.

        For answering an event that failed validation: the requester can be told why only when the
        bytes still say who it is (the tenant, the session, the job).
        """
        try:
            payload = read_json_object(self.value)
        except SchemaError:
            return None
        if not all(isinstance(payload.get(name), str) and payload[name] for name in required):
            return None
        return payload


class Batch(Generic[E]):
    """The decoded records of one poll, plus what the agent needs to act on them."""

    def __init__(self, runner: AgentRunner, records: list[Record[E]], now_ms: int, tick: bool = False) -> None:
        self._runner = runner
        #: True at least every ``tick_seconds``: the moment for timers (expiry, sweeps).
        self.tick = tick
        self.records = records
        self.now_ms = now_ms
        self.outbox: Outbox = runner.outbox
        self.failed = 0

    def __iter__(self) -> Iterator[Record[E]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def table(self, name: str) -> Table:
        return self._runner.tables[name]

    @property
    def partitions(self) -> list[int]:
        """Input partitions this worker owns right now."""
        return self._runner.assigned_partitions

    async def lag(self, partition: int) -> int | None:
        """Records of ``partition`` the broker holds beyond this batch; see :meth:`AgentRunner.lag`."""
        return await self._runner.lag(partition)

    def emit(
        self, topic: str, key: str | bytes | None, event: Envelope, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Send an event (Avro-encoded) when this batch is finished."""
        raw_key = key.encode() if isinstance(key, str) else key
        self.outbox.send(topic, raw_key, encode_event(event), headers=headers)

    async def publish(
        self, topic: str, key: str | bytes | None, event: Envelope, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[Any]:
        """Send an event now, not when the batch is finished; return its delivery future.

        For work that outlives its batch (see :meth:`defer`) and for streams a client watches live
        (answer chunks). The await only hands the message to the producer's accumulator, which
        batches it with whatever else is being sent; await the returned future (once, for the last
        message of a unit of work) before declaring that work done.
        """
        return await self._runner.publish(topic, key, encode_event(event), headers)

    def defer(self, record: Record[E]) -> Callable[[], None]:
        """Finish ``record`` after this batch: its offset is not committed until the callback is called.

        The agent may start a task for the record and ask for the next batch at once. Table writes and
        :meth:`dead_letter` calls the task makes before calling the callback become durable with the
        batch that is finished after that, before the offset is committed; a crash before then replays
        the record.
        """
        return self._runner.defer(record)

    def dead_letter(self, record: Record[Any], error: BaseException, attempts: int = 1) -> None:
        """Send the record's original bytes to its DLQ with the reason."""
        self._runner.dead_letter(record, error, attempts)
        self.failed += 1

    @contextmanager
    def guard(
        self, record: Record[E], on_error: Callable[[Record[E], Exception], None] | None = None
    ) -> Iterator[None]:
        """Contain a failure to one record: it is dead-lettered and the batch carries on.

        A failed record leaves nothing behind: its table writes and the outputs it emitted are undone
        before it is dead-lettered, so a re-drive from the DLQ is handled as if it were new (its event
        id was not remembered as seen). The body must not ``await``: another task's writes made
        meanwhile would be undone with the record's.
        """
        tables = self._runner.tables.values()
        mark = self.outbox.mark()
        for table in tables:
            table.begin()
        try:
            yield
        except Exception as exc:
            self.outbox.rollback(mark)
            for table in tables:
                table.rollback()
            logger.warning(
                "agent %s failed on %s[%d]@%d: %s", self._runner.name, record.topic, record.partition,
                record.offset, exc,
            )
            logger.debug("traceback:\n%s", traceback.format_exc())
            self.dead_letter(record, exc)
            if on_error is not None:
                try:
                    on_error(record, exc)
                except Exception:
                    logger.exception("error handler of agent %s failed", self._runner.name)
        else:
            for table in tables:
                table.release()


class BatchStream(Generic[E]):
    """The async iterator of batches handed to an agent; see the module docstring for its contract."""

    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner

    def __aiter__(self) -> BatchStream[E]:
        return self

    async def __anext__(self) -> Batch[E]:
        await self._runner.finish_batch()
        if self._runner.stopping:
            raise StopAsyncIteration
        return await self._runner.next_batch()

    @property
    def tables(self) -> dict[str, Table]:
        return self._runner.tables

    @property
    def settings(self) -> Any:
        return self._runner.settings


def dead_letter_message(
    record: Record[Any], error: BaseException, agent: str, attempts: int, message: str | None = None,
) -> tuple[list[tuple[str, bytes]], DeadLetter]:
    letter = DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        error_class=type(error).__name__,
        error_message=message or str(getattr(error, "reason", None) or error) or type(error).__name__,
        attempts=attempts,
        agent=agent,
    )
    return dlq_headers(letter, record.headers), letter


def now_ms() -> int:
    return int(time.time() * 1000)
