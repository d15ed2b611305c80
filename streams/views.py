"""Read-only views of a topic: the latest event per key, read from every partition without a group.

An agent sometimes needs state that another agent owns and that is partitioned by a different key: the
conversation agent (turns keyed by session) must know each tenant's training lock (state keyed by
tenant). Asking Redis per turn would put a network round trip on every turn; instead every worker
reads the compacted state topic whole, like Faust's global tables, and keeps the latest event per key
in memory. The view lags the topic by a fetch (milliseconds); it is a view, never a source of truth.
``caught_up`` is set once the view has read every partition up to the end it had when the view
started (its high watermark): a reader that must not act on a stale view waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import Envelope, decode_event
from streams.catalog import TopicSpec
from streams.kafka import consumer_factory, high_watermarks
from streams.metrics import RECORDS_SKIPPED
from streams.settings import Settings
from streams.skips import SkippedRecords
from streams.supervise import supervise

__all__ = ["TopicView"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Envelope)


class TopicView(Generic[E]):
    """The latest decodable event per key of ``topic``, kept up to date by a background task.

    ``keep(key)`` decides which keys count (say, not the refusals of the lock topic); records of other
    keys are not even decoded.
    A record that does not decode or validate — whatever the decoder raises — is skipped: counted in
    ``soma_records_skipped_total{reader="view"}``, logged rate-limited, and the key keeps its last
    valid event. A view must not stop on a bad record.
    """

    def __init__(
        self, settings: Settings, topic: TopicSpec, keep: Callable[[str], bool] | None = None
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._keep = keep
        self._latest: dict[str, E] = {}
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self.skips = SkippedRecords(logger, f"view of {topic.name}",
                                    counter=lambda name: RECORDS_SKIPPED.labels("view", name).inc())

    def get(self, key: str) -> E | None:
        return self._latest.get(key)

    def __len__(self) -> int:
        return len(self._latest)

    async def wait_caught_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the view to reach the end the topic had when it started."""
        if not self.caught_up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.caught_up.wait()
        return self.caught_up.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(supervise(f"view of {self.topic.name}", self._read, log=logger),
                                             name=f"view-{self.topic.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self) -> None:
        """Read the topic with a consumer of its own; a restart reads it again from the beginning."""
        consumer = consumer_factory(self.settings, group_id=None, auto_offset_reset="earliest")
        try:
            await consumer.start()
            await self._follow(consumer)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.topics()  # loads the metadata partitions_for_topic answers from
        partitions = consumer.partitions_for_topic(self.topic.name) or set()
        tps = [TopicPartition(self.topic.name, partition) for partition in sorted(partitions)]
        if not tps:
            raise RuntimeError(f"topic {self.topic.name} has no partitions (not created yet?)")
        # The end as it is now: the view has caught up once it has read that far. Not "an empty fetch":
        # a first fetch can come back empty before the broker has sent anything.
        ends = await high_watermarks(consumer, tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        behind = {tp: end for tp, end in ends.items() if end > 0}
        model: Any = self.topic.model
        while True:
            if not behind and not self.caught_up.is_set():
                logger.info("view of %s caught up: %d keys", self.topic.name, len(self._latest))
                self.caught_up.set()
            fetched = await consumer.getmany(timeout_ms=500, max_records=5000)
            for messages in fetched.values():
                for message in messages:
                    key = (message.key or b"").decode("utf-8", "replace")
                    if self._keep is not None and not self._keep(key):
                        continue
                    if message.value is None:
                        self._latest.pop(key, None)
                        continue
                    try:
                        event = decode_event(message.value, model)
                    except Exception as exc:  # any decoder error (OverflowError, RecursionError, ...)
                        self.skips.skip(self.topic.name, message.partition, message.offset, exc)
                        continue
                    self._latest[key] = event
            for tp in list(behind):
                if await consumer.position(tp) >= behind[tp]:
                    del behind[tp]
