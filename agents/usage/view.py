"""``GET /usage/{tenant}`` and ``GET /usage``: what this worker holds of a tenant's usage, read from the
usage agent's tables on the worker that owns the tenant's partition."""

from __future__ import annotations

from typing import Any

from agents.usage.accounting import Stores
from agents.usage.agent import UsageContext
from agents.usage.amounts import group_summary
from agents.usage.keys import SIZES, group_names, iso, size_of, start_of, window_key
from streams.catalog import USAGE_EVENTS
from streams.engine import AgentRunner
from streams.engine.registry import running_agent
from streams.web import page, partition_for

__all__ = ["tenant_usage", "usage_index", "usage_view"]


def tenant_usage(runner: AgentRunner | None, tenant: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``GET /usage/{tenant}`` on this worker.

    200: the tenant's latest closed rollups (hour, day), its latest forecast, its open windows, its
    period spend and budget. 404: this worker owns the tenant's partition but has no usage for it.
    421: another worker owns the partition (the body names the partition and the ones owned here; ask
    the other workers). 503: the agent is not running or still restoring its tables.
    """
    consumer = runner.consumer if runner is not None else None
    context = runner.context if runner is not None else None
    if runner is None or consumer is None or not isinstance(context, UsageContext):
        return 503, {"error": "the usage agent is not running on this worker (yet); retry shortly"}
    count = len(consumer.partitions_for_topic(USAGE_EVENTS.name) or ())
    if not count:
        return 503, {"error": f"no metadata for {USAGE_EVENTS.name} yet; retry shortly"}
    partition = partition_for(tenant.encode(), count)
    owned = list(runner.assigned_partitions)
    if partition not in owned:
        return 421, {
            "error": "this worker does not own the tenant's partition; ask the other workers",
            "tenant": tenant, "partition": partition, "owned_partitions": owned,
        }
    stores = Stores.of_partition(runner.tables, partition)
    row = stores.tenants.get(tenant)
    latest = stores.latest.get(tenant) or {}
    if row is None:
        return 404, {"error": "no usage recorded for this tenant", "tenant": tenant, "partition": partition}
    open_windows = []
    for key, groups in sorted(row["open"].items(), key=lambda item: (size_of(item[0]), start_of(item[0]))):
        size, start = size_of(key), start_of(key)
        rows = []
        for group in groups:
            values = stores.windows.get(window_key(tenant, group, size, start))
            if values is None:
                continue
            rows.append(group_summary(*group_names(group), values))
        open_windows.append({"window": size, "window_start": iso(start), "window_end": iso(start + SIZES[size]),
                             "groups": rows})
    budgets = context.accountant.budgets
    budget = budgets.for_tenant(tenant)
    return 200, {
        "tenant": tenant,
        "partition": partition,
        "event_time": iso(row["wm"]) if row["wm"] else None,
        "closed_until": iso(row["fc"]) if row["fc"] else None,
        "latest": {size: latest[size] for size in ("hour", "day") if size in latest},
        "forecast": latest.get("forecast"),
        "last_alert": latest.get("last_alert"),
        "open_windows": open_windows,
        "spend": {key: value for key, value in row["spend"].items()},
        "budget": {"monthly_usd": budget.monthly_usd, "daily_usd": budget.daily_usd,
                   "thresholds": list(budgets.thresholds)},
    }


@page("/usage/{tenant}")
async def usage_view(self: Any, request: Any, tenant: str) -> Any:
    """The latest rollups and forecast of one tenant, from the worker that owns its partition."""
    status, body = tenant_usage(running_agent("usage"), tenant)
    return self.json(body, status=status)


@page("/usage")
async def usage_index(self: Any, request: Any) -> Any:
    """The tenants this worker holds usage for, and its partitions (to find the owner of a tenant)."""
    runner = running_agent("usage")
    if runner is None or runner.consumer is None:
        return self.json({"error": "the usage agent is not running on this worker (yet)"}, status=503)
    tenants: list[str] = []
    for partition in runner.assigned_partitions:
        tenants.extend(key for key, _ in runner.tables["tenants"].items(partition))
    return self.json({"partitions": list(runner.assigned_partitions), "tenants": sorted(tenants)})
