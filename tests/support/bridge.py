"""The SSE bridge as a real process (``soma bridge``) for tests and benchmarks, and helpers to talk to it."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.process import free_port
from schemas import TurnEvent, encode_event
from streams.bridge.auth import mint_token
from tests.support.stack import SomaProcess

TEST_SECRET = "test-secret-of-the-bridge-0123456789abcdef"


@dataclass
class BridgeProcess(SomaProcess):
    """``soma bridge`` in its own process on a fixed port (a restart keeps the address)."""

    bootstrap: str
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    subcommand = "bridge"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SOMA_APP_ID": f"b{uuid.uuid4().hex[:8]}",
            "SOMA_DATA_DIR": str(self.workdir / "data"),
            "SOMA_BRIDGE_PORT": str(self.port),
            "SOMA_BRIDGE_JWT_SECRET": TEST_SECRET,
            "SOMA_BRIDGE_RETRY_MS": "300",
            "SOMA_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> BridgeProcess:
        self.spawn_soma()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_until_ready(timeout, url=f"{self.url}/readyz", interval=0.1)


def token(tenant: str, scopes: tuple[str, ...] = ("events:read", "turns:write"), ttl: int = 3600, **extra: Any) -> str:
    return mint_token(TEST_SECRET, tenant, list(scopes), ttl, **extra)


def turn_event(tenant: str, session: str, seq: int, turn_id: str = "t-1", delta: str = "",
               type_: str = "chunk") -> tuple[bytes, bytes, TurnEvent]:
    """A TurnEvent as the conversation agent publishes it: (key, Avro value, event)."""
    event = TurnEvent(tenant=tenant, session_id=session, turn_id=turn_id, type=type_, seq=seq,  # type: ignore[arg-type]
                      delta=delta or f"d{seq} ")
    return session.encode(), encode_event(event), event
