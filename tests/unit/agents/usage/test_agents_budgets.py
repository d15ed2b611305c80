"""Budgets from settings and files, and which thresholds a spend has crossed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agents.exceptions import BudgetFileError
from agents.usage.budgets import Budget, Budgets, crossed
from streams.settings import Settings


@pytest.fixture
def budget_file_factory(tmp_path: Path) -> Callable[[str, str], Path]:
    def make(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


def test_settings_give_every_tenant_the_default_budget() -> None:
    settings = Settings.from_env({"SOMA_BUDGET_MONTHLY_USD": "100", "SOMA_BUDGET_THRESHOLDS": "1.0,0.5,0.9"})
    budgets = Budgets.from_settings(settings)
    assert budgets.thresholds == (0.5, 0.9, 1.0)
    assert budgets.for_tenant("anyone") == Budget(monthly_usd=100.0)


def test_file_entries_win_over_the_settings(budget_file_factory: Callable[[str, str], Path]) -> None:
    path = budget_file_factory("b.toml", "thresholds = [0.8, 1.0]\n[default]\ndaily_usd = 5\n"
                                         "[tenants.acme]\nmonthly_usd = 500\ndaily_usd = 40\n")
    settings = Settings.from_env({"SOMA_BUDGETS_FILE": str(path), "SOMA_BUDGET_MONTHLY_USD": "100"})
    budgets = Budgets.from_settings(settings)
    assert budgets.for_tenant("acme") == Budget(500.0, 40.0)
    assert budgets.for_tenant("other") == Budget(daily_usd=5.0), "the file's default replaces the settings'"
    assert budgets.source == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tenants": {"a": {"monthly_usd": -1}}}', "positive number"),
        ('{"tenants": {"a": {"monthy_usd": 1}}}', "unknown keys"),
        ('{"thresholds": [0]}', "above 0"),
        ('{"budgets": {}}', "unknown keys"),
        ('{"tenants": []}', "must map tenant"),
    ],
)
def test_bad_budget_files_name_the_problem(
    budget_file_factory: Callable[[str, str], Path], text: str, message: str
) -> None:
    with pytest.raises(BudgetFileError, match=message):
        Budgets().with_file(budget_file_factory("b.json", text))


def test_crossed_reports_each_threshold_once() -> None:
    assert crossed(79.9, 100, (0.8, 1.0), []) == []
    assert crossed(80.0, 100, (0.8, 1.0), []) == [0.8]
    assert crossed(120.0, 100, (0.8, 1.0), [0.8]) == [1.0]
    assert crossed(120.0, 100, (0.8, 1.0), [0.8, 1.0]) == []
    assert crossed(120.0, None, (0.8, 1.0), []) == []
