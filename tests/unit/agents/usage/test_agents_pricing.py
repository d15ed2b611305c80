"""The price table: shipped entries, lookup rules, cost formula, override files and their errors."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.exceptions import PriceTableError
from agents.usage.pricing import DEFAULT_PRICES_RESOURCE, ModelPrice, PriceTable


@pytest.fixture
def override_factory(tmp_path: Path) -> Callable[[str, str], Path]:
    """``override_factory(name, text)``: an override file with that content."""

    def make(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_embedded_model_is_free(table: PriceTable) -> None:
    assert table.price("smollm2-135m-instruct") == ModelPrice(0.0, 0.0, 0.0)
    assert table.cost("smollm2-135m-instruct", 1_000_000, 1_000_000, 500_000) == 0.0


def test_cost_splits_cached_input_from_uncached_input(table: PriceTable) -> None:
    # gpt-4o: 2.50 input, 1.25 cached, 10.00 output per 1M tokens.
    cost = table.cost("gpt-4o", input_tokens=1_000, output_tokens=500, cached_tokens=400)
    assert cost == pytest.approx((600 * 2.5 + 400 * 1.25 + 500 * 10.0) / 1_000_000)


def test_cached_rate_falls_back_to_the_input_rate() -> None:
    price = ModelPrice(input_per_mtok=3.0, output_per_mtok=6.0)
    assert price.cost(1_000_000, 0, 1_000_000) == pytest.approx(3.0)
    assert price.cost(2_000_000, 1_000_000, 500_000) == pytest.approx(6.0 + 6.0)


def test_cached_tokens_beyond_input_tokens_are_refused(table: PriceTable) -> None:
    with pytest.raises(ValueError, match="subset of the input"):
        table.cost("gpt-4o", input_tokens=10, output_tokens=0, cached_tokens=11)


def test_unknown_model_has_no_price(table: PriceTable) -> None:
    assert table.price("no-such-model") is None
    assert table.cost("no-such-model", 10, 10) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("GPT-4o", "gpt-4o"),  # case-insensitive
        ("gpt-4o-2024-08-06", "gpt-4o"),  # dated snapshot
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longer name wins, not gpt-4o
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),  # four-digit snapshot
        ("gpt-4-0613", "gpt-4"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),  # provider prefix
        ("o1-preview-2024-09-12", "o1"),  # suffix stripped, then the alias
        ("chatgpt-4o-latest", "gpt-4o"),
        ("smollm2", "smollm2-135m-instruct"),
    ],
)
def test_lookup_rules(table: PriceTable, name: str, expected: str) -> None:
    assert table.price(name) == table.price(expected)
    assert table.price(name) is not None


@pytest.mark.parametrize("name", ["gpt-4o-audio-preview", "gpt-4o-realtime-preview", "gpt-4ox", "gpt"])
def test_no_loose_prefix_matching(table: PriceTable, name: str) -> None:
    """Variants are priced differently from their base model; no price beats a wrong one."""
    assert table.price(name) is None


def test_json_override_replaces_and_adds(override_factory: Callable[[str, str], Path]) -> None:
    path = override_factory("p.json", json.dumps({
        "models": {"gpt-4o": {"input": 1.0, "output": 2.0}, "acme-llm": {"input": 0.5, "output": 0.7, "cached": 0.1}},
        "aliases": {"acme": "acme-llm"},
    }))
    table = PriceTable.load(path)
    assert table.price("gpt-4o") == ModelPrice(1.0, 2.0, None)  # replaced whole: no cached rate left
    assert table.price("acme") == ModelPrice(0.5, 0.7, 0.1)
    assert table.price("gpt-4o-mini") is not None  # the rest of the shipped table stays
    assert table.sources[-1] == str(path)


def test_toml_override(override_factory: Callable[[str, str], Path]) -> None:
    path = override_factory("p.toml", '[models."my-model"]\ninput = 4\noutput = 8\n[aliases]\n"mine" = "my-model"\n')
    table = PriceTable.load(path)
    assert table.cost("mine", 1_000_000, 1_000_000) == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.yaml", "models: {}", "expected a .json or .toml"),
        ("p.json", "{not json", "not valid JSON"),
        ("p.toml", "models = [", "not valid TOML"),
        ("p.json", "[]", "object at the top level"),
        ("p.json", '{"models": {"m": {"input": -1, "output": 1}}}', "finite number >= 0"),
        ("p.json", '{"models": {"m": {"input": "1", "output": 1}}}', "expected a number"),
        ("p.json", '{"models": {"m": {"input": 1, "ouput": 1}}}', "unknown keys"),
        ("p.json", '{"models": {"m": {"input": 1}}}', "output: expected a number"),
        ("p.json", '{"aliases": {"x": "no-such-model"}}', "has no price"),
    ],
)
def test_bad_override_files_name_the_problem(
    override_factory: Callable[[str, str], Path], name: str, text: str, message: str
) -> None:
    with pytest.raises(PriceTableError, match=message):
        PriceTable.load(override_factory(name, text))


def test_missing_override_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="cannot read"):
        PriceTable.load(tmp_path / "absent.json")


def test_shipped_table_is_packaged_data() -> None:
    """The default table is read as package data, so it must be declared in pyproject's package-data."""
    root = Path(__file__).resolve().parents[4]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.json" in package_data["agents.usage"]
    assert (root / "agents" / "usage" / DEFAULT_PRICES_RESOURCE).is_file()
