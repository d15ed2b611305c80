"""Connections one bridge process holds, and delivery latency (produce → client receives) at a fixed rate.

Setup, all on loopback: a fresh embedded broker; one ``soma bridge`` process; ``--loaders`` load-generator
processes (this module with ``--loader``) that together open ``--clients`` event streams, client ``i``
following session ``i mod --sessions`` of one tenant, so each event goes to ``clients/sessions`` streams.
When every stream is open (checked on the bridge's own ``soma_bridge_clients`` gauge), this process
produces TurnEvents at ``--rate`` events/s for ``--duration`` s to random sessions, each carrying its
send time (``time.time()``) in ``delta``; a loader's latency sample is receive time − send time, for
every delivery. Reported: streams held, deliveries received vs expected, latency p50/p90/p99/max, and
the bridge's CPU and memory.

Run from the repository root::

    .venv/bin/python -m tests.perf.bench_bridge [--clients 10000] [--sessions 2000] [--rate 500] [--duration 20]

Exit status: 0 when the run completed with every delivery received (whether or not the latency target
was met), 1 when deliveries were missing, 2 on errors and timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.bridge.cli import raise_open_files_limit
from streams.catalog import CONVERSATION_EVENTS
from tests.support.bridge import BridgeProcess, token, turn_event
from tests.support.stack import REPO_ROOT, start_broker

TENANT = "bench"
TARGET_P99_MS = 250.0
_DELTA = re.compile(rb'"delta":"([0-9.]+)"')


# -- the load generator (a separate process) -------------------------------------------------------------


async def _client(host: str, port: int, path: str, latencies: list[float], state: dict[str, int],
                  gate: asyncio.Semaphore, stop: asyncio.Event) -> None:
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {head[:80]!r}")
    state["connected"] += 1
    buffer = b""
    try:
        while not stop.is_set():
            data = await reader.read(65536)
            if not data:
                state["dropped"] += 1
                return
            now = time.time()
            buffer += data
            lines = buffer.split(b"\n")
            buffer = lines.pop()
            for line in lines:
                if line.startswith(b"data: "):
                    match = _DELTA.search(line)
                    if match:
                        latencies.append(now - float(match.group(1)))
    finally:
        writer.close()


async def _loader(url: str, tok: str, first: int, count: int, sessions: int) -> None:
    raise_open_files_limit()
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    state = {"connected": 0, "dropped": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    gate = asyncio.Semaphore(200)
    tasks = [asyncio.create_task(_client(host, int(port),
                                         f"/v1/sessions/sess-{i % sessions}/events?access_token={tok}",
                                         latencies, state, gate, stop))
             for i in range(first, first + count)]
    while state["connected"] < count:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0].exception()}")
        await asyncio.sleep(0.1)
    print(json.dumps({"connected": state["connected"]}), flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"latencies": latencies, "dropped": state["dropped"]}), flush=True)


# -- the driver ------------------------------------------------------------------------------------------


def _proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and resident memory (bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * resource.getpagesize()
    return cpu, rss


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _bridge_clients(url: str) -> int:
    match = re.search(r"^soma_bridge_clients (\d+)", _metrics(url), flags=re.M)
    return int(match.group(1)) if match else 0


def _histogram(text: str, name: str = "soma_bridge_delivery_seconds") -> dict[float, float]:
    """Cumulative bucket counts of one of the bridge's histograms."""
    return {float(le): float(count) for le, count in
            re.findall(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)', text, flags=re.M)}


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile q of the observations between two scrapes."""
    diff = {le: after[le] - before.get(le, 0.0) for le in after}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return None
    for le in sorted(diff):
        if diff[le] >= q * total:
            return le * 1000
    return None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _produce(bootstrap: str, rate: int, duration: float, sessions: int) -> dict[int, int]:
    """Send ``rate`` events/s in 20 ms ticks; returns events sent per session."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    sent: dict[int, int] = {}
    rng = random.Random(1)
    tick = 0.02
    per_tick = rate * tick
    try:
        started = time.monotonic()
        due = 0.0
        while time.monotonic() - started < duration:
            due += per_tick
            futures = []
            while due >= 1:
                due -= 1
                session = rng.randrange(sessions)
                sent[session] = sent.get(session, 0) + 1
                key, value, _ = turn_event(TENANT, f"sess-{session}", sent[session], delta=repr(time.time()))
                futures.append(await producer.send(CONVERSATION_EVENTS.name, key=key, value=value))
            if futures:
                await asyncio.gather(*futures)
            next_tick = started + tick * (int((time.monotonic() - started) / tick) + 1)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        await producer.stop()
    return sent


def run(args: argparse.Namespace) -> int:
    limit = raise_open_files_limit()
    if limit < args.clients + 1000:
        print(f"open files limit {limit} is below {args.clients} clients; raise the hard limit (ulimit -Hn)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    broker = start_broker(workdir)
    bridge = BridgeProcess(broker.bootstrap_servers, workdir / "bridge", extra_env={
        "SOMA_LOG_LEVEL": "warning", "SOMA_BRIDGE_HEARTBEAT_SECONDS": "30"})
    loaders: list[subprocess.Popen[str]] = []
    try:
        bridge.start()
        assert bridge.process is not None
        tok = token(TENANT, ttl=3600)
        share = -(-args.clients // args.loaders)
        started = time.monotonic()
        for n in range(args.loaders):
            first = n * share
            count = min(share, args.clients - first)
            loaders.append(subprocess.Popen(
                [sys.executable, "-m", "tests.perf.bench_bridge", "--loader", "--url", bridge.url, "--token", tok,
                 "--first", str(first), "--count", str(count), "--sessions", str(args.sessions)],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True))
        for loader in loaders:
            assert loader.stdout is not None
            line = loader.stdout.readline()
            if not line:
                raise RuntimeError(f"a loader exited with {loader.wait()}")
        connect_seconds = time.monotonic() - started
        held = _bridge_clients(bridge.url)
        print(f"{held} streams open on one bridge process after {connect_seconds:.1f} s")
        cpu0, _ = _proc_stats(bridge.process.pid)
        scrape0 = _metrics(bridge.url)
        histogram0, lag0 = _histogram(scrape0), _histogram(scrape0, "soma_bridge_loop_lag_seconds")
        t0 = time.monotonic()
        sent = asyncio.run(_produce(broker.bootstrap_servers, args.rate, args.duration, args.sessions))
        produce_seconds = time.monotonic() - t0
        time.sleep(3.0)  # stragglers
        cpu1, rss = _proc_stats(bridge.process.pid)
        held_after = _bridge_clients(bridge.url)
        scrape1 = _metrics(bridge.url)
        histogram1, lag1 = _histogram(scrape1), _histogram(scrape1, "soma_bridge_loop_lag_seconds")
        latencies: list[float] = []
        dropped = 0
        for loader in loaders:
            loader.send_signal(signal.SIGTERM)
        for loader in loaders:
            out, _ = loader.communicate(timeout=120)
            result = json.loads(out.strip().splitlines()[-1])
            latencies += result["latencies"]
            dropped += result["dropped"]
        events = sum(sent.values())
        per_session = [args.clients // args.sessions + (1 if s < args.clients % args.sessions else 0)
                       for s in range(args.sessions)]
        expected = sum(count * per_session[s] for s, count in sent.items())
        ms = [v * 1000 for v in latencies]
        p50, p90, p99 = (_percentile(ms, q) for q in (0.5, 0.9, 0.99))
        print(json.dumps({
            "clients": args.clients, "streams_held": held, "streams_held_after": held_after,
            "connect_seconds": round(connect_seconds, 1), "sessions": args.sessions,
            "rate_target": args.rate, "events_sent": events, "rate_achieved": round(events / produce_seconds, 1),
            "deliveries_expected": expected, "deliveries_received": len(ms), "streams_dropped": dropped,
            "latency_ms": {"p50": round(p50, 1), "p90": round(p90, 1), "p99": round(p99, 1),
                           "max": round(max(ms), 1) if ms else None},
            # Inside the bridge only: reader hands a record out → written to the client's socket
            # (bucket upper bounds); the rest of the latency is broker, fetch and the load generators.
            "bridge_internal_ms_at_most": {"p50": _bucket_quantile(histogram0, histogram1, 0.5),
                                           "p99": _bucket_quantile(histogram0, histogram1, 0.99)},
            "bridge_loop_lag_ms_at_most": {"p50": _bucket_quantile(lag0, lag1, 0.5),
                                           "p99": _bucket_quantile(lag0, lag1, 0.99),
                                           "max": _bucket_quantile(lag0, lag1, 1.0)},
            "bridge_cpu_percent": round(100 * (cpu1 - cpu0) / (produce_seconds + 3.0), 1),
            "bridge_rss_mb": round(rss / 2**20, 1),
        }, indent=2))
        verdict = "met" if p99 <= TARGET_P99_MS and held >= args.clients else "NOT met"
        slow_gc = [line for line in bridge.tail_log(100_000).splitlines() if "gc generation" in line]
        print(f"bridge: {len(slow_gc)} garbage collections over 50 ms" + (f", e.g. {slow_gc[-1]}" if slow_gc else ""))
        print(f"target ({args.clients} streams, p99 ≤ {TARGET_P99_MS:.0f} ms at {args.rate} events/s): {verdict}")
        return 0 if len(ms) == expected else 1
    finally:
        for loader in loaders:
            if loader.poll() is None:
                loader.kill()
        bridge.stop()
        broker.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--rate", type=int, default=500, help="events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of producing")
    parser.add_argument("--loaders", type=int, default=4, help="load-generator processes")
    parser.add_argument("--loader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loader:
        asyncio.run(_loader(args.url, args.token, args.first, args.count, args.sessions))
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())


