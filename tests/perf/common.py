"""Helpers shared by the benchmarks: processes, CPU accounting, py-spy profiles, topics, measuring.

Each benchmark (``bench_locks``, ``bench_usage``) pre-loads a workload into a fresh embedded broker,
starts one contestant's worker process, and reads its output topic until the expected results are
there; these are the parts they have in common.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.process import ManagedProcess, stop_process
from streams.catalog import ensure_topics
from tests.support.stack import REPO_ROOT, Consumed, TopicReader, produce_raw

__all__ = [
    "PARTITIONS",
    "QUIX_PYTHON",
    "BenchError",
    "Process",
    "Profiler",
    "cpu_seconds",
    "cpu_share",
    "create_topics",
    "fmt_cpu",
    "measure",
    "positive",
    "preload",
    "raise_interrupt",
    "summarize_profile",
    "terminate",
]

PARTITIONS = 4
#: The Quix Streams contestants' interpreter: their own virtualenv (``make bench-usage`` / ``bench-locks``
#: make it), since quixstreams pins an older pydantic than the project's.
QUIX_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"


class BenchError(Exception):
    """The benchmark could not complete (a process died, a timeout, a broker problem)."""



def terminate(process: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (a Redis server the benchmark started, a worker)."""
    stop_process(process, grace)


class Process(ManagedProcess):
    """A contestant's worker process (a naive Faust app, a Quix pipeline) with its log."""

    stop_timeout = 15.0

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path, log_name: str = "worker.log") -> None:
        self.argv, self.env, self.workdir = argv, env, workdir
        self.log_path = workdir / log_name

    @property
    def label(self) -> str:
        return f"contestant worker ({' '.join(self.argv[1:3])})"

    def start(self) -> Process:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawn(self.argv, env={**os.environ, **self.env}, cwd=REPO_ROOT)
        return self


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None when unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Profiler:
    """py-spy on a worker while it processes (idle frames included), stopped with SIGINT."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.process = subprocess.Popen(
            [binary, "record", "-p", str(self.pid), "--idle", "--nonblocking", "-r", "100", "-f", "raw",
             "-o", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        stop_process(self.process, 30, first_signal=signal.SIGINT)  # SIGINT makes py-spy write its profile


def summarize_profile(path: Path, top: int = 15) -> str:
    """Self time (leaf frames) and our functions' inclusive time on the main thread of a py-spy raw profile.

    The main thread runs the event loop the agent lives on; other threads (Faust's consumer thread of
    the ``soma`` app, which idles in ``select``) are counted but not broken down.
    """
    if not path.exists():
        return f"  (no profile written at {path})"
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    main = other = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        if frames[0].startswith("Thread._bootstrap"):
            other += count
            continue
        main += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if any(part in frame for part in ("(agents/", "(streams/", "(schemas/", "(connectors/")):
                inclusive[frame] += count
    if not main:
        return "  (no samples of the main thread)"
    idle = sum(n for frame, n in leaves.items() if frame.startswith(("EpollSelector.select", "select ")))
    lines = [f"  main thread: {main} samples, {100 * idle / main:.0f}% idle in select "
             f"(other threads: {other} samples, not shown); top leaf frames (self time):"]
    lines += [f"    {100 * n / main:5.1f}%  {frame}" for frame, n in leaves.most_common(top)]
    lines.append("  our functions (inclusive time):")
    lines += [f"    {100 * n / main:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``: aggregate by function, not by line."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.rsplit(':', 1)[0].rstrip(')')})" if location else name



async def create_topics(bootstrap: str, topics: list[NewTopic]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await ensure_topics(admin, topics)
    finally:
        await admin.close()


async def preload(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partitions: int = PARTITIONS
) -> None:
    """Write the whole workload to the input topic and check it is all there.

    Counted by reading it back: the embedded broker's ListOffsets answers the base offset of the last
    record batch + 1, not the high watermark, so ``end_offsets`` undercounts there.
    """
    await produce_raw(bootstrap, topic, messages)
    reader = await TopicReader(bootstrap, topic).start()
    try:
        assert reader.consumer is not None
        found = len(reader.consumer.assignment())
        deadline = time.monotonic() + 60
        while len(reader.seen) < len(messages) and time.monotonic() < deadline:
            await reader.poll(timeout_ms=500)
    finally:
        await reader.stop()
    if found != partitions:
        raise BenchError(f"{topic} has {found} partitions, expected {partitions}")
    if len(reader.seen) != len(messages):
        raise BenchError(f"{topic} holds {len(reader.seen)} records after producing {len(messages)}")


async def measure(
    bootstrap: str, topic: str, expected: int, process: subprocess.Popen[bytes],
    timeout: float, stall_timeout: float, tail_log: Callable[[], str], broker_pid: int | None,
    profiler: Profiler | None, progress: Callable[[list[Consumed]], int] | None = None,
) -> tuple[list[Consumed], dict[str, float | None]]:
    """Wait for ``expected`` records on the output topic (or ``progress(records so far) >= expected``),
    then read them all."""
    reader = await TopicReader(bootstrap, topic).start()
    try:
        assert reader.consumer is not None
        last_progress, last_total, last_report = time.monotonic(), 0, time.monotonic()
        deadline = time.monotonic() + timeout
        samples: list[tuple[float, float | None, float | None]] = []
        while True:
            if process.poll() is not None:
                raise BenchError(f"worker exited with {process.returncode} before finishing:\n{tail_log()}")
            # Reading as we go (not end_offsets, which the embedded broker gets wrong) costs this
            # process a little CPU; a 200 ms poll keeps the fetches few and large.
            await reader.poll(timeout_ms=200)
            total = progress(reader.seen) if progress is not None else len(reader.seen)
            samples.append((time.time(), cpu_seconds(process.pid), cpu_seconds(broker_pid)))
            now = time.monotonic()
            if total and not last_total and profiler is not None:
                profiler.start()
            if total != last_total:
                last_total, last_progress = total, now
            if total >= expected:
                break
            if now > deadline:
                raise BenchError(f"timeout: {total} of {expected} outputs after {timeout:.0f} s:\n{tail_log()}")
            if total and now - last_progress > stall_timeout:
                raise BenchError(f"stalled: {total} of {expected} outputs, none for {stall_timeout:.0f} s:\n"
                                 f"{tail_log()}")
            if now - last_report >= 5:
                print(f"    ... {total}/{expected} outputs", flush=True)
                last_report = now
            await asyncio.sleep(0.2)
        if profiler is not None:
            profiler.stop()
        # Anything beyond the expected count (there should be nothing) shows up in the check.
        await asyncio.sleep(1.0)
        await reader.poll(timeout_ms=500)
    finally:
        await reader.stop()
    outputs = reader.seen
    first = min(record.timestamp for record in outputs) / 1000
    last = max(record.timestamp for record in outputs) / 1000
    cpu = {
        "worker": cpu_share(samples, first, last, 1),
        "broker": cpu_share(samples, first, last, 2),
    }
    return outputs, cpu


def cpu_share(samples: list[tuple[float, float | None, float | None]], start: float, end: float,
               index: int) -> float | None:
    """CPU used by a process between two wall-clock times, as a share of one core."""
    inside = [s for s in samples if s[index] is not None and start - 0.2 <= s[0] <= end + 0.2]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    used = float(last[index] or 0) - float(first[index] or 0)
    return used / (last[0] - first[0]) if last[0] > first[0] else None



def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def fmt_cpu(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"



def raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
