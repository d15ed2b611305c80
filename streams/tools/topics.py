"""``soma topics``: our topics with their partitions, offsets, and each consumer group's lag."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import click
from aiokafka import TopicPartition
from faust.cli import option

from streams.catalog import CATALOG
from streams.cli import SomaCommand, command
from streams.tools.cluster import Cluster
from streams.tools.common import JSON_OPTION, emit_json, tool_errors, wants_json

__all__ = ["topic_report"]


def _our_topics(present: set[str], app_prefixes: set[str], everything: bool) -> list[str]:
    """The catalog's topics and DLQs that exist, plus changelogs (or every topic with ``--all``)."""
    if everything:
        return sorted(present)
    wanted = []
    for spec in CATALOG.values():
        wanted.append(spec.name)
        if spec.is_input:
            wanted.append(spec.dlq)
    ours = [name for name in wanted if name in present]
    changelogs = sorted(name for name in present if name.endswith(".changelog")
                        and any(name.startswith(prefix + ".") for prefix in app_prefixes))
    return ours + changelogs


async def topic_report(cluster: Cluster, everything: bool = False,
                       groups: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Per topic: partitions with start/end offsets, and per group the committed offset and lag."""
    present = await cluster.topics()
    group_names = list(groups) or await cluster.groups()
    described = await cluster.describe_groups(group_names)
    names = _our_topics(present, {group.split(".")[0] for group in group_names} | {cluster.settings.app_id}, everything)
    tps = [TopicPartition(name, p) for name in names for p in await cluster.partitions(name)]
    begins = await cluster.beginning_offsets(tps)
    ends = await cluster.end_offsets(tps)
    committed_by_group = {group: await cluster.committed(group, tps) for group in group_names}
    by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in tps:
        by_topic[tp.topic].append(tp)
    report = []
    for name in names:
        parts = sorted(by_topic[name], key=lambda tp: tp.partition)
        spec = CATALOG.get(name)
        entry: dict[str, Any] = {
            "topic": name,
            "description": spec.description if spec else "",
            "partitions": [{"partition": tp.partition, "start": begins[tp], "end": ends[tp]} for tp in parts],
            "records": sum(ends[tp] - begins[tp] for tp in parts),
            "groups": [],
        }
        for group in group_names:
            committed = committed_by_group[group]
            if all(committed.get(tp) is None for tp in parts):
                continue
            lag = {tp.partition: ends[tp] - (committed.get(tp) or begins[tp]) for tp in parts}
            info = described.get(group)
            entry["groups"].append({
                "group": group,
                "state": info.state if info else "",
                "members": len(info.members) if info else 0,
                "lag": sum(lag.values()),
                "partitions": [{"partition": tp.partition, "committed": committed.get(tp), "lag": lag[tp.partition]}
                               for tp in parts],
            })
        report.append(entry)
    return report


@command(
    option("--all", "everything", is_flag=True, default=False,
           help="Every topic on the cluster, not only the catalog's, their DLQs and the changelogs."),
    option("--group", "-g", "groups", multiple=True,
           help="Only this consumer group's lag (repeat for more; default: every group)."),
    option("--partitions", "show_partitions", is_flag=True, default=False,
           help="Also print each partition's offsets and per-group lag."),
    JSON_OPTION,
)
@tool_errors
async def topics(self: SomaCommand, everything: bool, groups: tuple[str, ...], show_partitions: bool,
                 as_json: bool) -> None:
    """List our topics: partitions, start and end offsets, records retained, and each group's lag.

    Lag is the end offset minus the group's committed offset, summed over partitions (a partition
    the group never committed counts from the start). Groups are shown with their state and how many
    members are listed.

    \b
    Examples:
      soma topics
      soma topics --group soma-streams.locks --partitions
      soma topics --json | jq '.topics[] | {topic, records}'
    """
    settings = self.settings
    async with Cluster(settings) as cluster:
        report = await topic_report(cluster, everything, groups)
    if wants_json(self, as_json):
        emit_json({"bootstrap": settings.bootstrap_servers, "topics": report})
        return
    click.echo(f"{'topic':<52} {'parts':>5} {'records':>10}  groups (lag)")
    for entry in report:
        lags = ", ".join(f"{g['group']} {g['lag']} [{g['state'].lower()}, {g['members']} member(s)]"
                         for g in entry["groups"]) or "-"
        click.echo(f"{entry['topic']:<52} {len(entry['partitions']):>5} {entry['records']:>10}  {lags}")
        if show_partitions:
            for part in entry["partitions"]:
                per_group = "; ".join(
                    f"{g['group']} at {p['committed'] if p['committed'] is not None else '-'} (lag {p['lag']})"
                    for g in entry["groups"] for p in g["partitions"] if p["partition"] == part["partition"])
                click.echo(f"    partition {part['partition']:>3}: {part['start']}..{part['end']}"
                           + (f"  {per_group}" if per_group else ""))
