"""Questions operator commands ask the cluster: partitions, offsets, groups; broker quirks handled here.

Every command that needs "where does this partition end" or "which offset is at 10:00" asks
:class:`Cluster`, so the workarounds for the embedded broker (Tansu) live in one place and are
explained once:

- ``ListOffsets(latest)`` answers the base offset of the last record *batch* + 1, not the high
  watermark, so ``end_offsets`` undercounts whenever the last batch holds more than one record
  (measured; see also ``tests/perf/bench_locks.py``). :meth:`Cluster.end_offsets` uses
  :func:`streams.kafka.high_watermarks`, which reads the true one from a fetch response.
- ``ListOffsets(timestamp)`` is not Kafka's "first offset whose timestamp is >= T": measured, it
  answered offset 0 for most timestamps (timestamp -1 for times after the last record) and a later
  offset for others, skipping records at or after T when timestamps are not in offset order. A
  wrong answer cannot be told from a right one without reading the partition, so on Tansu
  :meth:`Cluster.offsets_for_time` scans the partition (exact). On other brokers it uses the time
  index, after checking each answer against the records around it (the record at the answer has
  the answered timestamp >= T, the one before it is < T); an answer that fails the check is
  replaced by a scan too.
- Departed members stay listed in ``DescribeGroups``: aiokafka sends ``LeaveGroup`` only for
  generation > 0, Tansu numbers a group's first generation 0, and it does not expire members whose
  session timed out (a stopped consumer was still listed after 65 s). :meth:`Cluster.lists_departed_members`
  tells ``soma offsets reset`` when a listed member must be checked for life before it is believed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka import admin_factory, consumer_factory, high_watermarks
from streams.settings import Settings
from streams.tools.exceptions import BrokerUnavailable, ToolError

__all__ = ["Cluster", "GroupInfo", "Member", "start_client", "stop_consumer"]

logger = logging.getLogger(__name__)

_FETCH_DEADLINE_SECONDS = 30.0
#: Tansu's default cluster id (``--kafka-cluster-id``); how the embedded broker is recognised.
_TANSU_CLUSTER_PREFIX = "tansu"


async def start_client(client: Any, settings: Settings) -> None:
    """Start an aiokafka client, turning "cannot connect" into one clear :class:`BrokerUnavailable`."""
    try:
        await client.start()
    except KafkaError as exc:
        try:
            await client.close() if hasattr(client, "close") else await client.stop()
        except Exception:
            logger.debug("closing a client that failed to start", exc_info=True)
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    # An unattached aiokafka consumer starts a background task at start; stopped before that task
    # first ran, ``stop()`` raises CancelledError. One turn of the loop lets it start.
    await asyncio.sleep(0)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer whose assignment may just have changed.

    aiokafka's fetch routine, on an assignment change, cancels its in-flight fetches and awaits them
    inside ``suppress(CancelledError)``; a ``stop()`` landing in that window has its cancellation
    swallowed and then waits forever for an assignment (seen as a hang after a rate-limited replay).
    A short pause lets the routine get past that window first.
    """
    await asyncio.sleep(0.05)
    await consumer.stop()


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    client_host: str


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group as ``DescribeGroups`` reports it."""

    group: str
    state: str
    members: tuple[Member, ...] = field(default_factory=tuple)
    protocol_type: str = ""


class Cluster:
    """An admin client and an unattached consumer, for metadata and offset questions (no group)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = admin_factory(settings)
        # check_crcs off: these reads only look at offsets and timestamps.
        self.consumer: AIOKafkaConsumer = consumer_factory(settings, group_id=None, check_crcs=False)
        self._cluster_id: str | None = None

    async def __aenter__(self) -> Cluster:
        await start_client(self.admin, self.settings)
        try:
            await start_client(self.consumer, self.settings)
        except BrokerUnavailable:
            await self.admin.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await stop_consumer(self.consumer)
        await self.admin.close()

    # -- topics --------------------------------------------------------------------------------------

    async def topics(self) -> set[str]:
        return set(await self.consumer.topics())

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; a clear error when the topic does not exist."""
        await self.consumer.topics()  # refreshes metadata
        found = self.consumer.partitions_for_topic(topic)
        if not found:
            raise ToolError(f"topic {topic} does not exist (a worker creates the catalog's topics when it starts)")
        return sorted(found)

    async def topic_partitions(self, topic: str, only: Iterable[int] = ()) -> list[TopicPartition]:
        partitions = await self.partitions(topic)
        wanted = set(only)
        unknown = wanted - set(partitions)
        if unknown:
            raise ToolError(f"{topic} has no partition {', '.join(str(p) for p in sorted(unknown))} "
                            f"(it has {len(partitions)}: 0..{len(partitions) - 1})")
        return [TopicPartition(topic, p) for p in partitions if not wanted or p in wanted]

    # -- offsets -------------------------------------------------------------------------------------

    async def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        tps = list(tps)
        return dict(await self.consumer.beginning_offsets(tps)) if tps else {}

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (one past the last record), correct on Tansu too."""
        tps = list(tps)
        result = await high_watermarks(self.consumer, tps, _FETCH_DEADLINE_SECONDS)
        if tps:
            self.consumer.unsubscribe()
        return result

    async def offsets_for_time(self, tps: Iterable[TopicPartition], timestamp_ms: int,
                               ends: dict[TopicPartition, int] | None = None) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record timestamp is >= ``timestamp_ms`` (the end if none).

        Uses the broker's time index when its answers check out against the records themselves;
        otherwise (Tansu, module docstring) scans the partition, which is exact but reads it all.
        """
        tps = list(tps)
        begin = await self.beginning_offsets(tps)
        ends = ends if ends is not None else await self.end_offsets(tps)
        answers: dict[TopicPartition, Any] = {}
        if not await self.is_embedded_broker():  # Tansu's time index answers are wrong (docstring)
            try:
                answers = dict(await self.consumer.offsets_for_times({tp: timestamp_ms for tp in tps}))
            except KafkaError as exc:
                logger.info("broker cannot look up offsets by time (%s); scanning", exc)
        result: dict[TopicPartition, int] = {}
        for tp in tps:
            if begin[tp] >= ends[tp]:
                result[tp] = ends[tp]
                continue
            if tp in answers and answers[tp] is None:  # a real Kafka's answer (Tansu's are never None)
                result[tp] = ends[tp]  # Kafka: no record at or after that time
                continue
            answer = answers.get(tp)
            if answer is not None and await self._answer_holds(tp, answer.offset, answer.timestamp, timestamp_ms,
                                                               begin[tp], ends[tp]):
                result[tp] = answer.offset
                continue
            result[tp] = await self._scan_for_time(tp, timestamp_ms, begin[tp], ends[tp])
        return result

    async def _answer_holds(self, tp: TopicPartition, offset: int, answered_ts: int, wanted_ts: int,
                            begin: int, end: int) -> bool:
        if not begin <= offset < end or answered_ts < wanted_ts:
            return False
        record = await self.read_at(tp, offset)
        if record is None or record.offset != offset or record.timestamp != answered_ts:
            return False
        if offset > begin:
            previous = await self.read_at(tp, offset - 1)
            if previous is not None and previous.offset == offset - 1 and previous.timestamp >= wanted_ts:
                return False
        return True

    async def _scan_for_time(self, tp: TopicPartition, wanted_ts: int, begin: int, end: int) -> int:
        self.consumer.assign([tp])
        self.consumer.seek(tp, begin)
        deadline = time.monotonic() + _FETCH_DEADLINE_SECONDS
        position = begin
        while position < end:
            fetched = await self.consumer.getmany(tp, timeout_ms=500, max_records=50_000)
            records = fetched.get(tp, [])
            if records:
                deadline = time.monotonic() + _FETCH_DEADLINE_SECONDS
            for record in records:
                if record.offset >= end:
                    return end
                if record.timestamp >= wanted_ts:
                    return int(record.offset)
            position = await self.consumer.position(tp)
            if time.monotonic() > deadline:
                raise ToolError(f"reading {tp.topic}[{tp.partition}] stalled at offset {position}")
        return end

    async def read_at(self, tp: TopicPartition, offset: int) -> Any:
        """The record at ``offset`` (or the next one after a gap), None if there is none."""
        self.consumer.assign([tp])
        self.consumer.seek(tp, offset)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            fetched = await self.consumer.getmany(tp, timeout_ms=200, max_records=1)
            if fetched.get(tp):
                return fetched[tp][0]
        return None

    # -- consumer groups -----------------------------------------------------------------------------

    async def groups(self) -> list[str]:
        listed = await self.admin.list_consumer_groups()
        return sorted(group for group, protocol in listed if protocol in ("consumer", ""))

    async def describe_groups(self, groups: Iterable[str]) -> dict[str, GroupInfo]:
        groups = list(groups)
        if not groups:
            return {}
        described: dict[str, GroupInfo] = {}
        responses = []
        # One group per request: Tansu's answer to a DescribeGroups naming several groups is one that
        # aiokafka cannot parse ("Buffer underrun decoding string"); one group at a time it is fine.
        for group in groups:
            responses += await self.admin.describe_consumer_groups([group])
        for response in responses:
            for entry in response.to_object()["groups"]:
                members = tuple(
                    Member(m.get("member_id", ""), m.get("client_id", ""), m.get("client_host", ""))
                    for m in entry.get("members", [])
                )
                described[entry["group"]] = GroupInfo(entry["group"], entry.get("state", ""), members,
                                                      entry.get("protocol_type", ""))
        return described

    async def committed(self, group: str, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition (None: never committed).

        Partitions are always named: an ``OffsetFetch`` for "all partitions" gets an answer from Tansu
        that aiokafka cannot parse.
        """
        tps = list(tps)
        if not tps:
            return {}
        answer = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        result: dict[TopicPartition, int | None] = {tp: None for tp in tps}
        for tp, meta in answer.items():
            result[tp] = meta.offset if meta.offset >= 0 else None
        return result

    async def cluster_id(self) -> str:
        if self._cluster_id is None:
            described = await self.admin.describe_cluster()
            self._cluster_id = str(described.get("cluster_id") or "")
        return self._cluster_id

    async def is_embedded_broker(self) -> bool:
        """Whether this is Tansu, the embedded broker, whose quirks the module docstring lists."""
        return (await self.cluster_id()).startswith(_TANSU_CLUSTER_PREFIX)

    async def lists_departed_members(self) -> bool:
        """Whether ``DescribeGroups`` may list members that are gone (the embedded broker; docstring)."""
        return await self.is_embedded_broker()
