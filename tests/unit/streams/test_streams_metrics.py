"""Metric definitions: bounded labels, the bulk latency histogram, breaker states, and the exposition
text as Prometheus' own parser reads it."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.circuit import CircuitBreaker
from streams.metrics import OTHER, BulkHistogram, LabelBudget, render, track_breaker


def _samples(text: str, name: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(name)]


def test_label_budget_admits_the_first_n_values_and_folds_the_rest() -> None:
    budget = LabelBudget(2)
    assert [budget(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert len(budget) == 2
    assert LabelBudget(5)(OTHER) == OTHER, "a real value named 'other' cannot take a slot"


async def test_bulk_histogram_buckets_are_cumulative() -> None:
    histogram = BulkHistogram("test_bulk_seconds", "test", ("agent",), buckets=(0.1, 1.0))
    histogram.observe_many(("a",), [0.05, 0.1, 0.5, 2.0])
    (family,) = list(histogram.collect())
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("test_bulk_seconds_bucket", "0.1")] == 2  # le is inclusive
    assert values[("test_bulk_seconds_bucket", "1.0")] == 3
    assert values[("test_bulk_seconds_bucket", "+Inf")] == 4
    assert values[("test_bulk_seconds_count", None)] == 4
    assert values[("test_bulk_seconds_sum", None)] == pytest.approx(2.65)


async def test_circuit_breaker_state_follows_the_breaker() -> None:
    now = [0.0]
    breaker = track_breaker(CircuitBreaker("test-dep", failure_threshold=1, reset_timeout=5, clock=lambda: now[0]))

    def states(text: str) -> dict[str, float]:
        return {labels["state"]: value for name, labels, value in _samples(text, "soma_circuit_breaker_state")
                if labels["breaker"] == "test-dep"}

    assert states((await render()).decode()) == {"closed": 1, "open": 0, "half_open": 0}
    breaker.record_failure(RuntimeError("down"))
    text = (await render()).decode()
    assert states(text) == {"closed": 0, "open": 1, "half_open": 0}
    transitions = {labels["state"]: value for name, labels, value in _samples(text, "soma_circuit_breaker_transitions")
                   if labels["breaker"] == "test-dep" and name.endswith("_total")}
    assert transitions == {"open": 1}
    now[0] = 10.0
    breaker.before_call()
    assert states((await render()).decode())["half_open"] == 1
