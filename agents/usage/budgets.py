"""Tenant budgets: a monthly and/or daily limit in USD, and the shares of it that raise an alert.

Budgets come from the settings (``SOMA_BUDGET_MONTHLY_USD`` / ``SOMA_BUDGET_DAILY_USD`` for every
tenant, ``SOMA_BUDGET_THRESHOLDS``) and from an optional file (``SOMA_BUDGETS_FILE``, JSON or TOML)
whose entries win::

    # budgets.toml
    thresholds = [0.5, 0.8, 1.0]      # optional: replaces SOMA_BUDGET_THRESHOLDS

    [default]                         # optional: tenants the file does not name
    monthly_usd = 100

    [tenants.acme]
    monthly_usd = 500
    daily_usd = 40

A tenant named in the file gets exactly its entry (a period it leaves out has no budget); the others
get ``[default]`` from the file, else the settings. Periods are UTC calendar days and months.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.exceptions import BudgetFileError
from agents.usage.pricing import load_table_file
from streams.settings import UsageSettings

__all__ = ["Budget", "Budgets", "Period", "crossed"]

Period = Literal["day", "month"]
_KEYS = {"monthly_usd": "month", "daily_usd": "day"}


@dataclass(frozen=True)
class Budget:
    monthly_usd: float | None = None
    daily_usd: float | None = None

    def limit(self, period: str) -> float | None:
        return self.monthly_usd if period == "month" else self.daily_usd

    @property
    def empty(self) -> bool:
        return self.monthly_usd is None and self.daily_usd is None


@dataclass(frozen=True)
class Budgets:
    """Every tenant's budget and the alert thresholds (shares of the budget, ascending)."""

    thresholds: tuple[float, ...] = (0.8, 1.0)
    default: Budget = Budget()
    tenants: dict[str, Budget] = field(default_factory=dict)
    source: str = "settings"

    def for_tenant(self, tenant: str) -> Budget:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def from_settings(cls, settings: UsageSettings) -> Budgets:
        """Budgets from the settings, with the file's entries when ``SOMA_BUDGETS_FILE`` is set."""
        monthly, daily = settings.budget_monthly_usd, settings.budget_daily_usd
        base = cls(  # (the settings admit inf; a budget must be an amount)
            thresholds=tuple(sorted(settings.budget_thresholds)),
            default=Budget(None if monthly is None else _usd(monthly, "SOMA_BUDGET_MONTHLY_USD"),
                           None if daily is None else _usd(daily, "SOMA_BUDGET_DAILY_USD")),
        )
        path = settings.budgets_file
        return base if path is None else base.with_file(path)

    def with_file(self, path: Path) -> Budgets:
        data = load_table_file(path, BudgetFileError)
        unknown = set(data) - {"thresholds", "default", "tenants"}
        if unknown:
            raise BudgetFileError(f"{path}: unknown keys {sorted(unknown)} (allowed: thresholds, default, tenants)")
        thresholds = self.thresholds
        if "thresholds" in data:
            thresholds = _thresholds(data["thresholds"], f"{path}: thresholds")
        default = self.default
        if "default" in data:
            default = _budget(data["default"], f"{path}: default")
        tenants_raw = data.get("tenants", {})
        if not isinstance(tenants_raw, dict):
            raise BudgetFileError(f"{path}: 'tenants' must map tenant -> {{monthly_usd, daily_usd}}")
        tenants = {str(name): _budget(entry, f"{path}: tenant {name!r}") for name, entry in tenants_raw.items()}
        return Budgets(thresholds, default, tenants, str(path))


def crossed(spent: float, limit: float | None, thresholds: Iterable[float], already: Iterable[float]) -> list[float]:
    """Thresholds that ``spent`` has reached against ``limit`` and that were not alerted yet."""
    if limit is None:
        return []
    done = set(already)
    return [share for share in thresholds if share not in done and spent >= share * limit]


def _budget(entry: Any, where: str) -> Budget:
    if not isinstance(entry, dict):
        raise BudgetFileError(f"{where}: expected an object with monthly_usd and/or daily_usd")
    unknown = set(entry) - set(_KEYS)
    if unknown:
        raise BudgetFileError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    values = {key: _usd(entry[key], f"{where}: {key}") for key in _KEYS if entry.get(key) is not None}
    return Budget(**values)


def _usd(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise BudgetFileError(f"{where}: expected a positive number of USD, got {value!r}")
    return float(value)


def _thresholds(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise BudgetFileError(f"{where}: expected a list of shares such as [0.8, 1.0]")
    shares = []
    for share in value:
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 10:
            raise BudgetFileError(f"{where}: each share must be a number above 0 and at most 10, got {share!r}")
        shares.append(float(share))
    return tuple(sorted(set(shares)))
