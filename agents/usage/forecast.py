"""Forecasting a sum over the next steps of a series: linear trend + t prediction interval.

Pure math, no I/O; the usage agent feeds it a tenant's hourly history (cost or tokens per closed
hour, zeros for quiet hours) and asks for the total of the next ``horizon`` hours.

Method (ordinary least squares with a prediction interval for a *sum of future observations*):

- Fit ``y_i = a + b·x_i + e_i`` on the history, ``x_i = 0 … n-1``, errors assumed independent with
  one spread ``σ``, estimated from the residuals: ``s² = Σ residual² / (n − 2)``.
- The forecast of the total over the next ``H`` steps ``x_f = n … n+H−1`` is
  ``Ŝ = Σ (â + b̂·x_f)``.
- Its prediction error ``S − Ŝ`` has variance ``σ² · (H + H²/n + (Σ(x_f − x̄))² / Sxx)``: ``H`` future
  noise terms plus the uncertainty of the fitted line (``Sxx = Σ(x_i − x̄)²``).
- The interval is ``Ŝ ± t_{(1+γ)/2, n−2} · s · √(H + H²/n + (Σ(x_f − x̄))² / Sxx)`` at confidence ``γ``.
  Student's t with ``n − 2`` degrees of freedom (not the normal) because ``σ`` is estimated; with short
  histories this matters (at ``n = 5`` the 90 % quantile is 2.35, not 1.64).
- Costs and tokens are never negative: the point forecast and both bounds are clamped at 0, which
  cannot lower the coverage of a non-negative quantity.

Under the model's assumptions the interval holds the true total with probability ``γ``; the unit
tests check that empirically ("honesty check"): over thousands of synthetic series with a known trend
and Gaussian noise, the share of intervals that contain the realised total must be within a few
standard errors of ``γ``. What the model does not capture: daily/weekly cycles land in the residuals
(they widen the interval; over whole days a cycle sums out, so the interval is then conservative),
and errors that are correlated hour to hour (bursty usage) make it too narrow. With fewer than 3
points there is no spread to estimate: the forecast is the mean rate times the horizon, with no
interval.

Any history is taken, and every result is a finite number ≥ 0: NaN counts as 0 and ±inf as the largest
float, the fit runs on the history divided by its largest magnitude (so no square overflows), and a
result beyond the largest float is reported as the largest float. A forecast never raises on data.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["METHOD", "MIN_POINTS", "Forecast", "Trend", "forecast_sum", "t_cdf", "t_quantile"]

MIN_POINTS = 3
METHOD = "ols-linear-trend+t-prediction-interval"
FALLBACK_METHOD = "mean-rate (fewer than 3 points: no interval)"
_MAX = sys.float_info.max


def _finite(value: float) -> float:
    """``value`` as a finite float: NaN is 0, ±inf (or an int beyond floats) is ± the largest float."""
    try:
        number = float(value)
    except OverflowError:
        return _MAX if value > 0 else -_MAX
    if number != number:
        return 0.0
    return min(_MAX, max(-_MAX, number))


def _amount(value: float) -> float:
    """A forecast figure as reported: finite and never negative (NaN is 0)."""
    return min(value, _MAX) if value > 0 else 0.0


@dataclass(frozen=True)
class Forecast:
    """The forecast total over ``horizon`` steps, and its interval (None without enough history)."""

    total: float
    lower: float | None
    upper: float | None
    confidence: float | None
    history_points: int
    horizon: int
    method: str
    slope: float = 0.0
    residual_sd: float | None = None


def forecast_sum(history: Sequence[float], horizon: int, confidence: float) -> Forecast:
    """Forecast ``sum(next horizon values)`` of ``history`` with a ``confidence`` prediction interval."""
    return Trend.fit(history).forecast(horizon, confidence)


@dataclass(frozen=True)
class Trend:
    """The least-squares line through a history, fitted once and asked for several horizons.

    ``intercept``, ``slope``, ``residual_sd`` and ``mean`` are in units of ``scale`` (the history's
    largest magnitude, 1 for an all-zero history).
    """

    n: int
    intercept: float
    slope: float
    residual_sd: float
    mean: float
    scale: float = 1.0

    @classmethod
    def fit(cls, history: Sequence[float]) -> Trend:
        values = [_finite(y) for y in history]
        n = len(values)
        scale = max(map(abs, values), default=0.0) or 1.0
        ys = [y / scale for y in values]  # in [-1, 1]: no sum or square below can overflow
        if n < MIN_POINTS:
            mean = sum(ys) / n if n else 0.0
            return cls(n, mean, 0.0, 0.0, mean, scale)
        x_mean = (n - 1) / 2
        y_mean = math.fsum(ys) / n
        sxx = n * (n * n - 1) / 12  # Σ (i − x̄)² for i = 0 … n−1
        sxy = math.fsum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys))
        slope = sxy / sxx
        intercept = y_mean - slope * x_mean
        rss = math.fsum((y - (intercept + slope * i)) ** 2 for i, y in enumerate(ys))
        return cls(n, intercept, slope, math.sqrt(max(rss, 0.0) / (n - 2)), y_mean, scale)

    def forecast(self, horizon: int, confidence: float) -> Forecast:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
        if horizon < 0:
            raise ValueError(f"horizon must not be negative, got {horizon}")
        n = self.n
        if horizon == 0:
            return Forecast(0.0, 0.0, 0.0, confidence, n, 0, METHOD if n >= MIN_POINTS else FALLBACK_METHOD)
        scale = self.scale
        if n < MIN_POINTS:
            return Forecast(_amount(self.mean * horizon * scale), None, None, None, n, horizon, FALLBACK_METHOD)
        x_mean = (n - 1) / 2
        sxx = n * (n * n - 1) / 12
        # Future x: n … n+H−1; their sum and their summed distance from x̄.
        future_x_sum = horizon * n + horizon * (horizon - 1) / 2
        total = horizon * self.intercept + self.slope * future_x_sum
        offset = future_x_sum - horizon * x_mean
        spread = 0.0
        if self.residual_sd > 0:  # (0 × an infinite quantile would be NaN)
            spread = self.residual_sd * math.sqrt(horizon + horizon * horizon / n + offset * offset / sxx)
        half_width = t_quantile((1 + confidence) / 2, n - 2) * spread if spread > 0 else 0.0
        return Forecast(
            total=_amount(total * scale),
            lower=_amount((total - half_width) * scale),
            upper=_amount((total + half_width) * scale),
            confidence=confidence,
            history_points=n,
            horizon=horizon,
            method=METHOD,
            slope=_finite(self.slope * scale),
            residual_sd=_finite(self.residual_sd * scale),
        )


# -- Student's t ---------------------------------------------------------------------------------------


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom (via the regularized incomplete beta)."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    if t == 0:
        return 0.5
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
        if high > 1e12:
            return math.inf
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h
