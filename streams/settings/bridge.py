"""Settings of the SSE bridge (`soma bridge`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from streams.settings.base import Section, split_csv

__all__ = ["BridgeSettings"]


class BridgeSettings(Section):
    section_title: ClassVar[str] = "The SSE bridge (`soma bridge`)"

    bridge_host: str = Field(
        "127.0.0.1", alias="SOMA_BRIDGE_HOST", min_length=1,
        description="Address the SSE bridge listens on (0.0.0.0 for every interface).",
    )
    bridge_port: int = Field(
        8088, alias="SOMA_BRIDGE_PORT", ge=1, le=65535, description="HTTP port of the SSE bridge.",
    )
    bridge_jwt_secret: str | None = Field(
        None, alias="SOMA_BRIDGE_JWT_SECRET",
        description="HS256 secret that bridge tokens are signed with (also what `soma token` signs with).",
    )
    bridge_jwt_public_key_file: Path | None = Field(
        None, alias="SOMA_BRIDGE_JWT_PUBLIC_KEY_FILE",
        description="PEM public key that RS256 bridge tokens are verified with.",
    )
    bridge_jwt_jwks_file: Path | None = Field(
        None, alias="SOMA_BRIDGE_JWT_JWKS_FILE",
        description="JWKS file (JSON) of RS256 public keys, chosen by the token's kid.",
    )
    bridge_jwt_audience: str | None = Field(
        None, alias="SOMA_BRIDGE_JWT_AUDIENCE", description="Required aud claim of bridge tokens (unset: not checked).",
    )
    bridge_jwt_issuer: str | None = Field(
        None, alias="SOMA_BRIDGE_JWT_ISSUER", description="Required iss claim of bridge tokens (unset: not checked).",
    )
    bridge_cors_origins: list[str] = Field(
        default_factory=list, alias="SOMA_BRIDGE_CORS_ORIGINS",
        description="Comma-separated origins allowed to call the bridge from a browser ('*' for any; empty: "
        "same origin only).",
    )
    bridge_heartbeat_seconds: float = Field(
        15.0, alias="SOMA_BRIDGE_HEARTBEAT_SECONDS", gt=0, le=300,
        description="Seconds between heartbeat comments on an idle event stream.",
    )
    bridge_retry_ms: int = Field(
        1000, alias="SOMA_BRIDGE_RETRY_MS", ge=0, le=600_000,
        description="Reconnect delay the bridge asks EventSource clients for (the SSE retry: field).",
    )
    bridge_client_buffer: int = Field(
        256, alias="SOMA_BRIDGE_CLIENT_BUFFER", ge=1, le=1_000_000,
        description="Events queued for one client; a client that falls this far behind is cut off.",
    )
    bridge_write_timeout_seconds: float = Field(
        10.0, alias="SOMA_BRIDGE_WRITE_TIMEOUT_SECONDS", gt=0, le=600,
        description="Longest a write to one client may block before the client is cut off.",
    )
    bridge_replay_records: int = Field(
        2000, alias="SOMA_BRIDGE_REPLAY_RECORDS", ge=0, le=1_000_000,
        description="Recent records kept in memory per partition to resume clients without reading Kafka.",
    )
    bridge_catchup_concurrency: int = Field(
        16, alias="SOMA_BRIDGE_CATCHUP_CONCURRENCY", ge=1, le=1000,
        description="Resumes that read Kafka at once (the rest wait their turn).",
    )
    bridge_catchup_timeout_seconds: float = Field(
        30.0, alias="SOMA_BRIDGE_CATCHUP_TIMEOUT_SECONDS", gt=0, le=3600,
        description="Longest a resume may take to read the missed events from Kafka.",
    )

    _split_origins = field_validator("bridge_cors_origins", mode="before")(split_csv)
