"""``soma offsets show|reset --group G``: a consumer group's positions, and moving them safely.

``reset`` computes a plan (per partition: committed offset before, offset after) and prints it; only
``--execute`` applies it, and never while the group has live members, because a running consumer
would overwrite the new offsets with its next commit (or skip/re-read records under the operator's
feet). Stop the group's workers first.

How "live" is decided: ``DescribeGroups`` lists the group's members. On Kafka a member is listed
until it leaves or its session times out, so a listed member is live and the reset is refused. The
embedded broker (Tansu) keeps listing members that have gone (see ``streams/tools/cluster.py``), so
there a listed member is checked: the command joins the group itself, which makes the coordinator
run a rebalance that every live member answers and a departed one cannot. If anyone else is in the
group after that, the reset is refused; otherwise the command, now the group's only member, commits
the plan and leaves. On an empty group the offsets are committed directly, as a client outside the
group (generation -1), which Kafka accepts only while the group has no members.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import click
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.cli import argument, option

from streams.cli import SomaCommand, command
from streams.kafka import consumer_factory
from streams.tools.cluster import Cluster, GroupInfo, start_client, stop_consumer
from streams.tools.common import JSON_OPTION, emit_json, tool_errors, wants_json
from streams.tools.exceptions import ArgumentError, GroupActive, ToolError
from streams.tools.selection import format_ms, parse_time

__all__ = ["PlannedOffset", "plan_reset"]

_JOIN_TIMEOUT_SECONDS = 60.0


@dataclass
class PlannedOffset:
    topic: str
    partition: int
    beginning: int
    end: int
    before: int | None
    after: int

    @property
    def lag_before(self) -> int | None:
        return None if self.before is None else self.end - self.before

    @property
    def lag_after(self) -> int:
        return self.end - self.after

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "lag_before": self.lag_before, "lag_after": self.lag_after}


def plan_reset(mode: str, value: Any, beginning: dict[TopicPartition, int], end: dict[TopicPartition, int],
               committed: dict[TopicPartition, int | None],
               by_time: dict[TopicPartition, int] | None = None) -> list[PlannedOffset]:
    """The new offset of every partition, kept within [beginning, end].

    ``shift-by`` moves from the committed offset, or from the beginning where nothing was committed
    (where the group's consumers would start, ``auto_offset_reset=earliest``).
    """
    plan = []
    for tp in sorted(beginning, key=lambda tp: (tp.topic, tp.partition)):
        low, high, before = beginning[tp], end[tp], committed.get(tp)
        if mode == "to-earliest":
            target = low
        elif mode == "to-latest":
            target = high
        elif mode == "to-offset":
            target = int(value)
        elif mode == "shift-by":
            target = (before if before is not None else low) + int(value)
        elif mode == "to-time":
            assert by_time is not None
            target = by_time[tp]
        else:
            raise ArgumentError(f"unknown reset mode {mode!r}")
        plan.append(PlannedOffset(tp.topic, tp.partition, low, high, before, min(max(target, low), high)))
    return plan


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _mode(to_earliest: bool, to_latest: bool, to_offset: int | None, to_time: str | None,
          shift_by: int | None) -> tuple[str, Any]:
    chosen = [(name, value) for name, value, given in (
        ("to-earliest", None, to_earliest), ("to-latest", None, to_latest),
        ("to-offset", to_offset, to_offset is not None), ("to-time", to_time, to_time is not None),
        ("shift-by", shift_by, shift_by is not None),
    ) if given]
    if len(chosen) != 1:
        raise ArgumentError("reset takes exactly one of --to-earliest, --to-latest, --to-offset N, --to-time T, "
                            f"--shift-by N (got {len(chosen) or 'none'})")
    return chosen[0]


async def _group_partitions(cluster: Cluster, group: str, topics: tuple[str, ...],
                            partitions: tuple[int, ...]) -> list[TopicPartition]:
    if topics:
        tps = []
        for topic in topics:
            tps += await cluster.topic_partitions(topic, partitions)
        return tps
    everything = []
    for topic in sorted(await cluster.topics()):
        everything += [TopicPartition(topic, p) for p in await cluster.partitions(topic)]
    committed = await cluster.committed(group, everything)
    used = sorted({tp.topic for tp, offset in committed.items() if offset is not None})
    if not used:
        raise ToolError(f"group {group} has no committed offsets; name the topic(s) with --topic "
                        "(see 'soma topics' for the groups and their topics)")
    tps = []
    for topic in used:
        tps += await cluster.topic_partitions(topic, partitions)
    return tps


@command(
    argument("action", type=click.Choice(["show", "reset"])),
    option("--group", "-g", required=True, help="The consumer group, e.g. soma-streams.locks (<app id>.<agent>)."),
    option("--topic", "-t", "topics", multiple=True,
           help="Only this topic (repeat for more; default: every topic the group has committed offsets on)."),
    option("--partition", "-p", "partitions", type=int, multiple=True, help="Only this partition (repeat)."),
    option("--to-earliest", is_flag=True, default=False, help="reset: to the first retained record."),
    option("--to-latest", is_flag=True, default=False, help="reset: to the end (skip everything not yet read)."),
    option("--to-offset", type=int, default=None, help="reset: to this offset in every partition chosen."),
    option("--to-time", default=None, metavar="TIME",
           help="reset: to the first record at or after TIME (ISO-8601, epoch ms, yesterday, 2h, ...)."),
    option("--shift-by", type=int, default=None, metavar="N",
           help="reset: move N records (negative: back) from the committed offset."),
    option("--execute", is_flag=True, default=False, help="reset: apply. Without it, only show the plan."),
    JSON_OPTION,
)
@tool_errors
async def offsets(self: SomaCommand, action: str, group: str, topics: tuple[str, ...], partitions: tuple[int, ...],
                  to_earliest: bool, to_latest: bool, to_offset: int | None, to_time: str | None,
                  shift_by: int | None, execute: bool, as_json: bool) -> None:
    """Show a consumer group's offsets and lag, or reset them: ACTION is show or reset.

    reset takes exactly one of --to-earliest, --to-latest, --to-offset N, --to-time TIME, --shift-by N,
    prints the plan (committed offset before and after, per partition; kept between the first
    retained record and the end) and changes nothing unless --execute is given. It refuses while the
    group has live members: stop the group's workers first, reset, start them again.

    \b
    Examples:
      soma offsets show --group soma-streams.locks
      soma offsets reset --group soma-streams.locks --to-time 2026-11-25T08:00:00Z
      soma offsets reset --group soma-streams.locks --shift-by -100 --partition 2 --execute
    """
    as_json = wants_json(self, as_json)
    mode = _mode(to_earliest, to_latest, to_offset, to_time, shift_by) if action == "reset" else None
    if action == "show" and (execute or any((to_earliest, to_latest, to_offset is not None, to_time, shift_by))):
        raise ArgumentError("--to-*, --shift-by and --execute are options of 'offsets reset'")
    time_ms = parse_time(to_time, int(time.time() * 1000)) if to_time else None
    settings = self.settings
    async with Cluster(settings) as cluster:
        tps = await _group_partitions(cluster, group, topics, partitions)
        beginning = await cluster.beginning_offsets(tps)
        end = await cluster.end_offsets(tps)
        committed = await cluster.committed(group, tps)
        info = (await cluster.describe_groups([group])).get(group, GroupInfo(group, "Unknown"))
        departed_listed = await cluster.lists_departed_members()
        if mode is None:
            plan = [PlannedOffset(tp.topic, tp.partition, beginning[tp], end[tp], committed[tp],
                                  _or(committed[tp], beginning[tp])) for tp in tps]
            _report_show(group, info, plan, as_json)
            return
        by_time = await cluster.offsets_for_time(tps, time_ms, end) if time_ms is not None else None
        plan = plan_reset(mode[0], mode[1], beginning, end, committed, by_time)
        method = None
        if execute:
            method = await _apply(cluster, group, info, departed_listed, plan)
            after = await cluster.committed(group, tps)
            wrong = [p for p in plan if after.get(TopicPartition(p.topic, p.partition)) != p.after]
            if wrong:
                raise ToolError(f"the broker did not keep the new offsets of {len(wrong)} partition(s), e.g. "
                                f"{wrong[0].topic}[{wrong[0].partition}]")
    _report_reset(group, info, departed_listed, mode, time_ms, plan, execute, method, as_json)


async def _apply(cluster: Cluster, group: str, info: GroupInfo, departed_listed: bool,
                 plan: list[PlannedOffset]) -> str:
    offsets_ = {TopicPartition(p.topic, p.partition): OffsetAndMetadata(p.after, "") for p in plan}
    if not info.members:
        consumer = consumer_factory(cluster.settings, group_id=group)
        await start_client(consumer, cluster.settings)
        try:
            consumer.assign(list(offsets_))
            await consumer.commit(offsets_)
        finally:
            await stop_consumer(consumer)
        return "committed as a client outside the (empty) group"
    if not departed_listed:
        raise GroupActive(_active_message(group, info))
    await _commit_as_only_member(cluster, group, info, offsets_)
    return "joined the group as its only member, committed, left"


def _active_message(group: str, info: GroupInfo, live: int | None = None) -> str:
    count = live if live is not None else len(info.members)
    ids = ", ".join(m.member_id for m in info.members[:3])
    return (f"refused: group {group} has {count} active member(s) ({ids}{', ...' if len(info.members) > 3 else ''}); "
            "stop its workers, then reset")


async def _commit_as_only_member(cluster: Cluster, group: str, info: GroupInfo,
                                 offsets_: dict[TopicPartition, OffsetAndMetadata]) -> None:
    """Join the group (see the module docstring), refuse if anyone else answers, else commit and leave."""
    topics = sorted({tp.topic for tp in offsets_})
    consumer = consumer_factory(cluster.settings, *topics, group_id=group)
    await start_client(consumer, cluster.settings)
    try:
        deadline = time.monotonic() + _JOIN_TIMEOUT_SECONDS
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise ToolError(f"could not join group {group} within {_JOIN_TIMEOUT_SECONDS:.0f} s "
                                "to check its members")
            await asyncio.sleep(0.2)
        mine = consumer._coordinator.member_id  # aiokafka keeps it there; no public accessor
        now = (await cluster.describe_groups([group])).get(group, GroupInfo(group, "Unknown"))
        others = [m for m in now.members if m.member_id != mine]
        missing = set(offsets_) - set(consumer.assignment())
        if others or missing:
            raise GroupActive(_active_message(group, GroupInfo(group, now.state, tuple(others)), len(others) or None))
        await consumer.commit(offsets_)
    finally:
        await stop_consumer(consumer)


def _report_show(group: str, info: GroupInfo, plan: list[PlannedOffset], as_json: bool) -> None:
    if as_json:
        emit_json({"group": group, "state": info.state, "members": [m.member_id for m in info.members],
                   "partitions": [{"topic": p.topic, "partition": p.partition, "committed": p.before,
                                   "beginning": p.beginning, "end": p.end, "lag": p.lag_before} for p in plan]})
        return
    click.echo(f"group {group}: {info.state}, {len(info.members)} member(s) listed")
    click.echo(f"{'topic':<40} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}")
    for p in plan:
        click.echo(f"{p.topic:<40} {p.partition:>9} {p.before if p.before is not None else '-':>10} {p.end:>10} "
                   f"{p.lag_before if p.lag_before is not None else '-':>8}")


def _report_reset(group: str, info: GroupInfo, departed_listed: bool, mode: tuple[str, Any], time_ms: int | None,
                  plan: list[PlannedOffset], execute: bool, method: str | None, as_json: bool) -> None:
    note = ""
    if not execute and info.members:
        note = (f"{len(info.members)} member(s) listed; the embedded broker also lists members that have gone, "
                "so --execute will check whether they are alive" if departed_listed
                else f"--execute will be refused while the group's {len(info.members)} member(s) are active")
    if as_json:
        emit_json({"group": group, "state": info.state, "members": [m.member_id for m in info.members],
                   "mode": mode[0], "value": mode[1], "time": format_ms(time_ms) if time_ms is not None else None,
                   "dry_run": not execute, "applied": execute, "method": method, "note": note or None,
                   "partitions": [p.to_json() for p in plan]})
        return
    target = f"{mode[0]} {format_ms(time_ms) if time_ms is not None else (mode[1] if mode[1] is not None else '')}"
    click.echo(f"group {group}: {info.state}, {len(info.members)} member(s) listed; reset {target.strip()}")
    click.echo(f"{'topic':<40} {'partition':>9} {'before':>10} {'after':>10} {'change':>8} {'lag after':>9}")
    for p in plan:
        change = p.after - p.before if p.before is not None else None
        click.echo(f"{p.topic:<40} {p.partition:>9} {p.before if p.before is not None else '-':>10} {p.after:>10} "
                   f"{f'{change:+d}' if change is not None else 'new':>8} {p.lag_after:>9}")
    if execute:
        click.echo(f"applied ({method})")
    else:
        click.echo("dry run: nothing changed (add --execute to apply)" + (f"; {note}" if note else ""))
