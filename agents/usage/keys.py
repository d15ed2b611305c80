"""Where the usage agent keeps things and what it names them: table keys, UTC periods, report ids.

A window's sums are keyed ``tenant|provider|model|kind|size|window_start`` (``|`` and ``%`` in provider
and model names are %-escaped, so a name cannot forge another group); a tenant's open windows,
period spend and alerts are keyed ``size:start`` / ``period:start`` inside its row. A report's id is a
function of what it reports, so a replay after a crash sends the same ids.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from functools import lru_cache

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "SIZES",
    "dt",
    "floor_hour",
    "group_id",
    "group_names",
    "iso",
    "month_bounds",
    "month_start_of_day",
    "period_bounds",
    "report_id",
    "size_of",
    "start_of",
    "window_key",
]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SIZES = {"hour": HOUR_MS, "day": DAY_MS}
_NAMESPACE = uuid.UUID("6f0b7c1e-2a47-4c55-9a0e-5d1b0f1c0a11")


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def group_id(provider: str, model: str, kind: str) -> str:
    return f"{_escape(provider)}|{_escape(model)}|{kind}"


def group_names(group: str) -> tuple[str, str, str]:
    """(provider, model, kind) of a :func:`group_id`."""
    provider, model, kind = (_unescape(part) for part in group.split("|"))
    return provider, model, kind


def window_key(tenant: str, group: str, size: str, start_ms: int) -> str:
    """``tenant|provider|model|kind|size|window_start`` (``|`` and ``%`` in names are %-escaped)."""
    return f"{tenant}|{group}|{size}|{start_ms}"


def size_of(key: str) -> str:
    """The size (``hour``/``day``) or period of a ``size:start`` key."""
    return key.split(":", 1)[0]


def start_of(key: str) -> int:
    """The start (epoch ms) of a ``size:start`` key."""
    return int(key.split(":", 1)[1])


def month_bounds(ms: int) -> tuple[int, int]:
    """Start and end (epoch ms) of the UTC calendar month holding ``ms``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@lru_cache(maxsize=4096)
def month_start_of_day(day_ms: int) -> int:
    """Cached: every accepted event asks it for its day."""
    return month_bounds(day_ms)[0]


def period_bounds(period: str, ms: int) -> tuple[int, int]:
    if period == "month":
        return month_bounds(ms)
    start = ms - ms % DAY_MS
    return start, start + DAY_MS


def floor_hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(ms: int) -> str:
    return dt(ms).isoformat(timespec="seconds").replace("+00:00", "Z")


def report_id(*parts: object) -> str:
    """A deterministic UUID (version 5 layout, BLAKE2b of the parts): the same report gets the same id."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16, key=_NAMESPACE.bytes).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"
