"""Keeping a long-running task alive: restart it after a failure, with a backoff, until it is cancelled.

Every background reader of this package (an agent's batch loop, a topic view, the bridge's fan-out)
must survive a broker that goes away, a dependency that fails, a bug hit by one record: nothing stops a
stream. :func:`supervise` is the one loop that does it. It runs ``run()``; when that raises, it logs
the failure with its class and traceback, waits, and runs it again. The wait starts at ``first_delay``
and doubles up to ``max_delay``; a run that lasted ``healthy_after`` seconds counts as healthy, so its
failure waits ``first_delay`` again (a task that fails once a day must not wait the cap each time).

A task with its own idea of a failure (the agent runner narrows a crashed batch, quarantines a record,
rewinds its consumer) says so in ``on_failure``: it gets the failure and the backoff due, does its
recovery and returns the :class:`Restart` to make. Cancelling the supervisor cancels the run or the
wait and ends it (``CancelledError`` propagates); a run that returns ends it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

__all__ = ["FailureHandler", "Restart", "retry_delays", "supervise"]

logger = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0


def retry_delays(first: float = FIRST_DELAY_SECONDS, maximum: float = MAX_DELAY_SECONDS) -> Iterator[float]:
    """Seconds to wait before each retry: ``first``, doubling, capped at ``maximum``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, maximum)


@dataclass(frozen=True)
class Restart:
    """How to restart after a failure: after ``delay`` seconds; ``note`` is added to the log line.

    A delay shorter than the backoff due (a quick retry the task chose) does not grow the backoff.
    """

    delay: float
    note: str = ""


#: ``on_failure(error, backoff due)``: the task's own recovery; returns the restart to make.
FailureHandler = Callable[[Exception, float], Awaitable[Restart]]


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    log: logging.Logger = logger,
    on_failure: FailureHandler | None = None,
    on_restart: Callable[[], object] | None = None,
    stopping: Callable[[], bool] | None = None,
    first_delay: float = FIRST_DELAY_SECONDS,
    max_delay: float = MAX_DELAY_SECONDS,
    healthy_after: float = HEALTHY_AFTER_SECONDS,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``run()`` until it returns or the caller is cancelled, restarting it after every failure.

    ``name`` starts the log line of a failure (``"<name> crashed (<class>; restart <n> in <s> s)"``,
    with the traceback). ``on_restart`` is called once per failure (a restart counter); ``stopping``
    is asked before every run and ends the loop when it says so. An exception of ``on_failure`` itself
    ends the loop with that exception: a task that cannot recover is not restarted blindly.
    """
    delays = retry_delays(first_delay, max_delay)
    backoff = next(delays)
    restarts = 0
    while stopping is None or not stopping():
        started = clock()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            restarts += 1
            if on_restart is not None:
                on_restart()
            if clock() - started >= healthy_after:
                delays = retry_delays(first_delay, max_delay)
                backoff = next(delays)
            restart = await on_failure(exc, backoff) if on_failure is not None else Restart(backoff)
            log.error("%s crashed (%s; restart %d in %.1f s%s)", name, type(exc).__name__, restarts, restart.delay,
                      restart.note, exc_info=exc)
        await sleep(restart.delay)
        if restart.delay >= backoff:
            backoff = next(delays)
