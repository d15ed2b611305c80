"""``soma bridge`` (serve the SSE bridge) and ``soma token`` (mint a development token)."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import time
from typing import Any

import click
from aiohttp import web
from faust.cli import option

from streams.bridge.auth import SCOPE_EVENTS_READ, SCOPE_TURNS_WRITE, mint_token
from streams.cli import SomaCommand, command
from streams.gcpause import freeze_long_lived
from streams.settings import Settings

__all__ = ["raise_open_files_limit", "serve"]

logger = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Lift the soft limit of open files to the hard limit: every client is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _log_slow_collections(threshold: float = 0.05) -> None:
    """Log garbage collections that stall the event loop (every client waits behind them)."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (elapsed := time.perf_counter() - started[0]) > threshold:
            logger.warning("gc generation %d took %.0f ms (%d collected)", info["generation"], elapsed * 1000,
                           info["collected"])

    gc.callbacks.append(callback)


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run the bridge until SIGTERM or SIGINT; then tell clients to reconnect elsewhere and stop."""
    from streams.bridge.app import create_app

    limit = raise_open_files_limit()
    _log_slow_collections()
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    try:
        await runner.setup()
    except Exception as exc:
        await runner.cleanup()
        raise click.ClickException(f"bridge could not start (Kafka at {settings.bootstrap_servers}?): {exc}") from None
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    freezer = asyncio.create_task(freeze_long_lived())
    logger.info("bridge listening on http://%s:%d (open files limit %d)", host, port, limit)
    print(f"soma bridge: listening on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        freezer.cancel()
        await runner.cleanup()


@command(
    option("--host", default=None, help="Address to listen on (default SOMA_BRIDGE_HOST)."),
    option("--port", type=int, default=None, help="Port to listen on (default SOMA_BRIDGE_PORT)."),
)
async def bridge(self: SomaCommand, host: str | None, port: int | None) -> None:
    """Serve result topics over HTTP as server-sent events (see the README, "SSE bridge")."""
    settings = self.settings
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    await serve(settings, host or settings.bridge_host, port or settings.bridge_port)


@command(
    option("--tenant", required=True, help="Tenant the token grants."),
    option("--scope", "scopes", multiple=True, help=f"Scope to grant (repeatable; default {SCOPE_EVENTS_READ} "
           f"and {SCOPE_TURNS_WRITE})."),
    option("--ttl", type=int, default=3600, help="Lifetime in seconds."),
    option("--subject", default=None, help="sub claim (the user)."),
)
async def token(self: SomaCommand, tenant: str, scopes: Any, ttl: int, subject: str | None) -> None:
    """Print an HS256 bridge token signed with SOMA_BRIDGE_JWT_SECRET (for development and tests)."""
    settings = self.settings
    if not settings.bridge_jwt_secret:
        raise click.ClickException("set SOMA_BRIDGE_JWT_SECRET (the secret the bridge verifies tokens with)")
    click.echo(mint_token(settings.bridge_jwt_secret, tenant, list(scopes) or [SCOPE_EVENTS_READ, SCOPE_TURNS_WRITE],
                          ttl, subject, settings.bridge_jwt_audience, settings.bridge_jwt_issuer))
