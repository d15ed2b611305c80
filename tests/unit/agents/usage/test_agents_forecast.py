"""Forecast math: Student's t against published values, the OLS sum forecast, and the honesty check.

The honesty check draws thousands of synthetic histories with a known linear trend and Gaussian noise,
forecasts the next H steps with an interval at confidence γ, draws the future the same way, and
counts how often the interval holds the realised total. The share must be within ``TOLERANCE`` (about
four standard errors of a binomial share) of γ. The check can fail: an interval half as wide, or a
normal quantile where the t quantile belongs on short histories, is caught by the same tolerance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from agents.usage.forecast import FALLBACK_METHOD, METHOD, Forecast, forecast_sum, t_cdf, t_quantile

TRIALS = 2000
TOLERANCE = 0.03  # 4 standard errors of a share at γ = 0.9 over 2000 trials (sqrt(.09/2000) = .0067)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706204736),
        (0.975, 2, 4.302652730),
        (0.95, 5, 2.015048373),
        (0.975, 10, 2.228138852),
        (0.95, 30, 1.697260887),
        (0.995, 100, 2.625890521),
        (0.9, 3, 1.637744354),
    ],
)
def test_t_quantile_matches_published_values(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-7)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-7)
    assert t_cdf(expected, df) == pytest.approx(p, abs=1e-9)


def test_t_approaches_the_normal_for_many_degrees_of_freedom() -> None:
    assert t_quantile(0.975, 1_000_000) == pytest.approx(1.959964, rel=1e-5)


def test_exact_line_is_forecast_exactly_with_a_zero_width_interval() -> None:
    history = [10 + 2 * i for i in range(24)]  # y = 10 + 2x
    result = forecast_sum(history, horizon=3, confidence=0.9)
    assert result.total == pytest.approx((10 + 48) + (10 + 50) + (10 + 52))
    assert result.lower == pytest.approx(result.total)
    assert result.upper == pytest.approx(result.total)
    assert result.slope == pytest.approx(2.0)
    assert result.history_points == 24 and result.horizon == 3 and result.method == METHOD


def test_interval_matches_the_textbook_formula() -> None:
    history = [3.0, 5.0, 4.0, 8.0, 7.0, 9.0]
    result = forecast_sum(history, horizon=2, confidence=0.95)
    n, xs = 6, list(range(6))
    x_mean, y_mean = sum(xs) / n, sum(history) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, history, strict=True)) / sxx
    a = y_mean - b * x_mean
    s = math.sqrt(sum((y - a - b * x) ** 2 for x, y in zip(xs, history, strict=True)) / (n - 2))
    future = [6, 7]
    total = sum(a + b * x for x in future)
    offset = sum(x - x_mean for x in future)
    half = 2.776445105 * s * math.sqrt(2 + 4 / n + offset**2 / sxx)  # t(0.975, 4)
    assert result.total == pytest.approx(total)
    assert result.lower == pytest.approx(total - half)
    assert result.upper == pytest.approx(total + half)


def test_too_little_history_gives_the_mean_rate_and_no_interval() -> None:
    result = forecast_sum([2.0, 4.0], horizon=24, confidence=0.9)
    assert result.total == pytest.approx(72.0)
    assert result.lower is None and result.upper is None and result.confidence is None
    assert result.method == FALLBACK_METHOD
    assert forecast_sum([], horizon=24, confidence=0.9).total == 0.0


def test_bounds_are_never_negative() -> None:
    falling = [100.0 - 10 * i + (1 if i % 2 else -1) for i in range(10)]
    result = forecast_sum(falling, horizon=48, confidence=0.9)
    assert result.total == 0.0 and result.lower == 0.0 and result.upper is not None and result.upper >= 0.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5])
def test_confidence_must_be_a_probability(bad: float) -> None:
    with pytest.raises(ValueError):
        forecast_sum([1.0, 2.0, 3.0], horizon=1, confidence=bad)


# -- the honesty check ---------------------------------------------------------------------------------

Interval = Callable[[list[float], int, float], tuple[float, float]]


def _ours(history: list[float], horizon: int, confidence: float) -> tuple[float, float]:
    result: Forecast = forecast_sum(history, horizon, confidence)
    assert result.lower is not None and result.upper is not None
    return result.lower, result.upper


def coverage(interval: Interval, *, points: int, horizon: int, confidence: float, noise: float,
             trend: float, level: float, trials: int = TRIALS, seed: int = 1) -> float:
    """Share of trials whose interval holds the realised total of the next ``horizon`` steps."""
    hits = 0
    for trial in range(trials):
        rng = random.Random(seed * 1_000_003 + trial)
        history = [level + trend * i + rng.gauss(0, noise) for i in range(points)]
        future = [level + trend * i + rng.gauss(0, noise) for i in range(points, points + horizon)]
        low, high = interval(history, horizon, confidence)
        hits += low <= sum(future) <= high
    return hits / trials


@pytest.mark.parametrize(
    ("points", "horizon", "confidence", "noise", "trend"),
    [
        (48, 24, 0.9, 2.0, 0.3),  # two days of hours -> next 24 h
        (168, 168, 0.8, 5.0, 0.05),  # a week of hours -> next 7 days
        (72, 200, 0.95, 1.0, -0.05),  # falling usage, a long horizon (to month end)
        (6, 3, 0.9, 3.0, 1.0),  # short history: the t quantile has to carry it
    ],
)
def test_honesty_interval_holds_the_truth_at_its_stated_rate(
    points: int, horizon: int, confidence: float, noise: float, trend: float
) -> None:
    # The level keeps every realised total well above 0, so clamping at 0 plays no part.
    level = 50.0 + abs(trend) * (points + horizon)
    rate = coverage(_ours, points=points, horizon=horizon, confidence=confidence, noise=noise, trend=trend,
                    level=level)
    assert abs(rate - confidence) <= TOLERANCE, f"coverage {rate:.3f} at stated confidence {confidence}"


def test_honesty_check_catches_an_interval_that_is_too_narrow() -> None:
    def half_width(history: list[float], horizon: int, confidence: float) -> tuple[float, float]:
        low, high = _ours(history, horizon, confidence)
        middle, half = (low + high) / 2, (high - low) / 4
        return middle - half, middle + half

    rate = coverage(half_width, points=48, horizon=24, confidence=0.9, noise=2.0, trend=0.3, level=80.0)
    assert abs(rate - 0.9) > TOLERANCE, "the tolerance must be tight enough to catch a dishonest interval"


def test_honesty_check_catches_a_normal_quantile_on_short_histories() -> None:
    """Why Student's t: with 6 points the normal quantile under-covers by more than the tolerance."""
    from statistics import NormalDist

    def normal(history: list[float], horizon: int, confidence: float) -> tuple[float, float]:
        low, high = _ours(history, horizon, confidence)
        t = t_quantile((1 + confidence) / 2, len(history) - 2)
        z = NormalDist().inv_cdf((1 + confidence) / 2)
        middle, half = (low + high) / 2, (high - low) / 2 * z / t
        return middle - half, middle + half

    rate = coverage(normal, points=6, horizon=3, confidence=0.9, noise=3.0, trend=1.0, level=80.0)
    assert rate < 0.9 - TOLERANCE
