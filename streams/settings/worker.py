"""Settings of the worker process: identity, data, logs and its HTTP port."""

from __future__ import annotations

import hashlib
import re
import socket
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from streams.settings.base import Section

__all__ = ["WorkerSettings"]


class WorkerSettings(Section):
    section_title: ClassVar[str] = "The worker process: identity, data, logs and its HTTP port"

    app_id: str = Field(
        "soma-streams", alias="SOMA_APP_ID", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Application id: prefix of consumer groups and changelog topics.",
    )
    data_dir: Path = Field(
        Path("./data"), alias="SOMA_DATA_DIR",
        description="Directory for RocksDB state and local Qdrant data.",
    )
    worker_id: str | None = Field(
        None, alias="SOMA_WORKER_ID", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200,
        description="Identity of this worker that survives its restarts, for `SOMA_STATIC_MEMBERSHIP`; unique "
        "per worker (two workers with one id fence each other off). Unset: the host name and a digest of "
        "`SOMA_DATA_DIR`.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", alias="SOMA_LOG_LEVEL", description="Log level: debug, info, warning or error."
    )
    web_port: int = Field(
        6066, alias="SOMA_WEB_PORT", ge=1, le=65535,
        description="HTTP port of the worker (health, metrics).",
    )
    web_enabled: bool = Field(True, alias="SOMA_WEB_ENABLED", description="Serve the worker's HTTP port.")
    web_bind: str = Field(
        "127.0.0.1", alias="SOMA_WEB_BIND",
        description="Address the worker's HTTP port binds to (0.0.0.0 in containers, so Prometheus can scrape it).",
    )
    metrics_max_tenants: int = Field(
        50, alias="SOMA_METRICS_MAX_TENANTS", ge=0, le=10_000,
        description="Most tenant label values a worker exports to Prometheus; later tenants are 'other'.",
    )
    metrics_max_models: int = Field(
        20, alias="SOMA_METRICS_MAX_MODELS", ge=0, le=1_000,
        description="Most model label values a worker exports to Prometheus; later models are 'other'.",
    )

    @cached_property
    def state_dir(self) -> Path:
        return self.data_dir / self.app_id

    @cached_property
    def stable_worker_id(self) -> str:
        """``SOMA_WORKER_ID``, else the host name and a digest of the data dir: the same after a restart."""
        if self.worker_id:
            return self.worker_id
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "host"
        return f"{host}-{digest}"
