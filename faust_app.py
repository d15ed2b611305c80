"""The Faust app of SomaAgent Streams, its settings, and the ``soma`` command line.

Settings come from environment variables only (twelve-factor), are validated once at start, and a bad
value stops the process with a message naming the variable and what it accepts. Agents and operator
commands are found by Faust's autodiscovery of the ``agents`` and ``streams`` packages; this module
never imports them by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn

import click
import faust
from faust.cli import AppCommand
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["Settings", "SettingsError", "SomaCommand", "app", "command", "main", "settings"]

logger = logging.getLogger(__name__)


class SettingsError(Exception):
    """A setting from the environment is missing or out of range."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseModel):
    """Every setting of the system; the field alias is the environment variable that sets it.

    The README's settings table is generated from the descriptions here, so keep them accurate.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        None,
        alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded broker "
        "of the local stack at 127.0.0.1:SOMA_EMBEDDED_BROKER_PORT.",
    )
    embedded_broker_port: int = Field(
        9092, alias="SOMA_EMBEDDED_BROKER_PORT", ge=1, le=65535,
        description="Port of the embedded Tansu broker that `soma dev` starts.",
    )
    app_id: str = Field(
        "soma-streams", alias="SOMA_APP_ID", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Application id: prefix of consumer groups and changelog topics.",
    )
    data_dir: Path = Field(
        Path("./data"), alias="SOMA_DATA_DIR",
        description="Directory for RocksDB state and local Qdrant data.",
    )
    partitions: int = Field(
        4, alias="SOMA_PARTITIONS", ge=1, le=1024,
        description="Partitions of each topic this app creates.",
    )
    replication_factor: int = Field(
        1, alias="SOMA_REPLICATION_FACTOR", ge=1, le=16,
        description="Replication factor of topics this app creates.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", alias="SOMA_LOG_LEVEL", description="Log level: debug, info, warning or error."
    )
    web_port: int = Field(
        6066, alias="SOMA_WEB_PORT", ge=1, le=65535,
        description="HTTP port of the worker (health, metrics).",
    )
    web_enabled: bool = Field(True, alias="SOMA_WEB_ENABLED", description="Serve the worker's HTTP port.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", alias="REDIS_URL", pattern=r"^(redis|rediss|unix)://",
        description="Redis that mirrors lock state (redis://, rediss:// or unix://).",
    )
    redis_timeout_seconds: float = Field(
        0.5, alias="SOMA_REDIS_TIMEOUT_SECONDS", gt=0, le=30,
        description="Socket timeout of Redis calls; a slower Redis is treated as down.",
    )
    admin_roles: list[str] = Field(
        default_factory=lambda: ["admin"], alias="SOMA_ADMIN_ROLES",
        description="Comma-separated roles that may enable/disable training locks.",
    )
    admin_users: list[str] = Field(
        default_factory=list, alias="SOMA_ADMIN_USERS",
        description="Comma-separated users treated as admins whatever their roles.",
    )
    lock_default_ttl_seconds: int = Field(
        86_400, alias="SOMA_LOCK_DEFAULT_TTL_SECONDS", ge=1,
        description="TTL of a training lock when the command gives none (24 h).",
    )
    lock_max_ttl_seconds: int = Field(
        604_800, alias="SOMA_LOCK_MAX_TTL_SECONDS", ge=1, validate_default=True,
        description="Longest TTL a lock may be granted or extended to (7 days).",
    )
    lock_expiry_check_seconds: float = Field(
        1.0, alias="SOMA_LOCK_EXPIRY_CHECK_SECONDS", gt=0, le=60,
        description="How often expired locks are looked for (expiry precision).",
    )
    dedupe_ttl_seconds: int = Field(
        604_800, alias="SOMA_DEDUPE_TTL_SECONDS", ge=60,
        description="How long processed event ids are remembered to drop duplicates.",
    )
    restore_timeout_seconds: float = Field(
        300.0, alias="SOMA_RESTORE_TIMEOUT_SECONDS", gt=0, le=86_400,
        description="Longest one attempt to restore a partition's tables from their changelog may take; a "
        "slower or failing attempt is reported (/readyz, soma_restore_failures_total, an error log) and "
        "retried with a backoff, resuming where it stopped.",
    )
    batch_max_records: int = Field(
        2000, alias="SOMA_BATCH_MAX_RECORDS", ge=1, le=100_000,
        description="Most records an agent takes from the broker per batch.",
    )
    batch_wait_ms: int = Field(
        100, alias="SOMA_BATCH_WAIT_MS", ge=0, le=10_000,
        description="Longest time the broker holds an agent's fetch open while nothing new arrives. Kafka "
        "answers as soon as data comes, so this only paces idle polling; the embedded Tansu broker answers "
        "a waiting fetch late, adding about a quarter of this to an agent's pickup on average (measured). "
        "Conversation turns use SOMA_TURN_FETCH_WAIT_MS instead.",
    )
    # -- operator tooling (issue 7) ------------------------------------------------------------------
    max_event_bytes: int = Field(
        1_048_576, alias="SOMA_MAX_EVENT_BYTES", ge=256, le=64 * 1_048_576,
        description="Largest event an agent accepts; a bigger one goes to the DLQ (EventTooLarge), "
        "from where it can be re-driven after this limit is raised.",
    )
    quarantine_after_crashes: int = Field(
        3, alias="SOMA_QUARANTINE_AFTER_CRASHES", ge=1, le=100,
        description="Crashes of an agent at one record (alone in its batch) after which that record is "
        "quarantined to the DLQ and the agent moves past it.",
    )
    # -- failover (issue 12) -----------------------------------------------------------------------
    session_timeout_ms: int = Field(
        10_000, alias="SOMA_SESSION_TIMEOUT_MS", ge=1000, le=300_000,
        description="Consumer group session of every agent's consumer (and Faust's own): how long the "
        "broker keeps a silent member (a crashed worker) before its partitions go to the others; heartbeats "
        "go every third of it (at most 1 s). A Kafka cluster refuses less than its "
        "group.min.session.timeout.ms (6000 by default). `soma dev` runs its worker on the embedded broker "
        "with 2000, where a join takes half the session.",
    )
    static_membership: bool = Field(
        False, alias="SOMA_STATIC_MEMBERSHIP",
        description="Join the agents' consumer groups as static members (Kafka group.instance.id, one per "
        "agent, from SOMA_WORKER_ID): a worker restarted within SOMA_SESSION_TIMEOUT_MS takes its partitions "
        "back without a rebalance. A static member does not leave its groups when it stops, so its "
        "partitions wait for the session to end unless it comes back. For Kafka clusters; the embedded "
        "broker holds every static join about 6 s.",
    )
    worker_id: str | None = Field(
        None, alias="SOMA_WORKER_ID", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200,
        description="Identity of this worker that survives its restarts, for SOMA_STATIC_MEMBERSHIP; unique "
        "per worker (two workers with one id fence each other off). Unset: the host name and a digest of "
        "SOMA_DATA_DIR.",
    )

    # -- usage metrics (agents/usage.py, agents/pricing.py) ---------------------------------------
    prices_file: Path | None = Field(
        None, alias="SOMA_PRICES_FILE",
        description="JSON or TOML file of model prices (USD per 1M tokens) laid over the shipped price table.",
    )
    budgets_file: Path | None = Field(
        None, alias="SOMA_BUDGETS_FILE",
        description="JSON or TOML file of per-tenant budgets (monthly_usd, daily_usd) and alert thresholds.",
    )
    budget_monthly_usd: float | None = Field(
        None, alias="SOMA_BUDGET_MONTHLY_USD", gt=0,
        description="Monthly budget in USD of every tenant the budgets file does not name (unset: none).",
    )
    budget_daily_usd: float | None = Field(
        None, alias="SOMA_BUDGET_DAILY_USD", gt=0,
        description="Daily budget in USD of every tenant the budgets file does not name (unset: none).",
    )
    budget_thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 1.0], alias="SOMA_BUDGET_THRESHOLDS",
        description="Comma-separated shares of a budget that raise an alert (each once per period).",
    )
    usage_grace_seconds: int = Field(
        300, alias="SOMA_USAGE_GRACE_SECONDS", ge=0, le=86_400,
        description="How long after a window's end late usage events are still counted in it.",
    )
    usage_idle_close_seconds: float = Field(
        60.0, alias="SOMA_USAGE_IDLE_CLOSE_SECONDS", ge=0,
        description="A tenant silent this long has its event-time clock moved to the wall clock, closing "
        "its due windows (0: only newer events close windows).",
    )
    usage_max_future_seconds: int = Field(
        300, alias="SOMA_USAGE_MAX_FUTURE_SECONDS", ge=0,
        description="Usage events dated further ahead of the worker's clock go to the DLQ.",
    )
    usage_tick_seconds: float = Field(
        5.0, alias="SOMA_USAGE_TICK_SECONDS", gt=0, le=300,
        description="How often the usage agent looks for windows to close when no events arrive.",
    )
    forecast_confidence: float = Field(
        0.9, alias="SOMA_FORECAST_CONFIDENCE", gt=0, lt=1,
        description="Confidence of the forecast prediction intervals.",
    )
    forecast_history_hours: int = Field(
        336, alias="SOMA_FORECAST_HISTORY_HOURS", ge=3, le=8_784,
        description="Most closed hours of a tenant's history the forecast fits (14 days).",
    )
    metrics_max_tenants: int = Field(
        50, alias="SOMA_METRICS_MAX_TENANTS", ge=0, le=10_000,
        description="Most tenant label values a worker exports to Prometheus; later tenants are 'other'.",
    )
    web_bind: str = Field(
        "127.0.0.1", alias="SOMA_WEB_BIND",
        description="Address the worker's HTTP port binds to (0.0.0.0 in containers, so Prometheus can scrape it).",
    )
    metrics_max_models: int = Field(
        20, alias="SOMA_METRICS_MAX_MODELS", ge=0, le=1_000,
        description="Most model label values a worker exports to Prometheus; later models are 'other'.",
    )

    # -- conversation turns and the LLM ---------------------------------------------------------------
    openai_base_url: str | None = Field(
        None, alias="OPENAI_BASE_URL", pattern=r"^https?://",
        description="OpenAI-compatible API of the chat model, e.g. https://api.openai.com/v1. Unset: the "
        "embedded llama.cpp server of the local stack at 127.0.0.1:SOMA_EMBEDDED_MODEL_PORT.",
    )
    openai_api_key: str = Field(
        "no-key", alias="OPENAI_API_KEY", description="API key sent to OPENAI_BASE_URL (any text for servers "
        "without authentication).",
    )
    openai_model: str = Field(
        "smollm2-135m-instruct", alias="OPENAI_MODEL", min_length=1,
        description="Chat model used when a turn names none.",
    )
    llm_provider: str | None = Field(
        None, alias="SOMA_LLM_PROVIDER",
        description="Provider name in usage events. Unset: 'llama.cpp' for the embedded server, else the "
        "host of OPENAI_BASE_URL.",
    )
    embedded_model_port: int = Field(
        8081, alias="SOMA_EMBEDDED_MODEL_PORT", ge=1, le=65535,
        description="Port of the embedded llama.cpp model server that `soma dev` starts.",
    )
    llm_timeout_seconds: float = Field(
        30.0, alias="SOMA_LLM_TIMEOUT_SECONDS", gt=0, le=600,
        description="Longest wait for the LLM's first byte and between two chunks of a stream.",
    )
    llm_max_retries: int = Field(
        2, alias="SOMA_LLM_MAX_RETRIES", ge=0, le=10,
        description="Retries of an LLM call that failed before its first token (connection errors, 429, 5xx).",
    )
    llm_circuit_failures: int = Field(
        5, alias="SOMA_LLM_CIRCUIT_FAILURES", ge=1, le=1000,
        description="Consecutive failed LLM calls that open the circuit breaker (calls then fail fast).",
    )
    llm_circuit_reset_seconds: float = Field(
        10.0, alias="SOMA_LLM_CIRCUIT_RESET_SECONDS", gt=0, le=3600,
        description="How long an open LLM circuit fails fast before one probe call is let through.",
    )
    system_prompt: str | None = Field(
        None, alias="SOMA_SYSTEM_PROMPT",
        description="System message put first in every prompt. Unset: none (the model's template decides).",
    )
    history_max_turns: int = Field(
        10, alias="SOMA_HISTORY_MAX_TURNS", ge=0, le=1000,
        description="Most earlier turns of a session (prompt + answer) put into the prompt.",
    )
    history_max_tokens: int = Field(
        1500, alias="SOMA_HISTORY_MAX_TOKENS", ge=0,
        description="Token budget of the history in a prompt (estimated at 4 characters a token); the oldest "
        "turns are left out first.",
    )
    turn_max_prompt_chars: int = Field(
        8000, alias="SOMA_TURN_MAX_PROMPT_CHARS", ge=1,
        description="Longest prompt a turn may carry; longer ones fail and go to the DLQ.",
    )
    turn_default_max_tokens: int = Field(
        256, alias="SOMA_TURN_DEFAULT_MAX_TOKENS", ge=1,
        description="Answer length limit (tokens) of a turn that sets no max_tokens.",
    )
    turn_max_tokens_cap: int = Field(
        1024, alias="SOMA_TURN_MAX_TOKENS_CAP", ge=1,
        description="Upper bound of a turn's max_tokens; larger requests are lowered to it.",
    )
    turn_timeout_seconds: float = Field(
        120.0, alias="SOMA_TURN_TIMEOUT_SECONDS", gt=0, le=3600,
        description="Longest a turn may take, from the worker taking it to its last token (waiting for the "
        "session's previous turn and for a model slot, memory retrieval and the model); then it fails.",
    )
    max_concurrent_turns: int = Field(
        64, alias="SOMA_MAX_CONCURRENT_TURNS", ge=1, le=10_000,
        description="Model slots: turns a worker answers at once, shared round-robin among tenants (turns of "
        "one session always run one after another).",
    )
    max_turns_in_flight: int = Field(
        256, alias="SOMA_MAX_TURNS_IN_FLIGHT", ge=1, le=100_000,
        description="Turns a worker holds at once (answering or waiting for a slot or their session); while "
        "it holds this many it fetches no more.",
    )
    training_state_wait_seconds: float = Field(
        30.0, alias="SOMA_TRAINING_STATE_WAIT_SECONDS", ge=0, le=600,
        description="Longest the conversation agent waits at start for its view of the training lock state "
        "to reach the topic's end before it takes turns; while the view is behind, policy 'reject' refuses "
        "every turn (fail closed).",
    )
    turn_fetch_wait_ms: int = Field(
        10, alias="SOMA_TURN_FETCH_WAIT_MS", ge=1, le=10_000,
        description="SOMA_BATCH_WAIT_MS for the conversation agent: a person waits for the first token, so "
        "its fetches are short (each idle fetch costs worker and broker CPU).",
    )
    chunk_interval_ms: int = Field(
        50, alias="SOMA_CHUNK_INTERVAL_MS", ge=0, le=10_000,
        description="Answer deltas arriving within this many ms of the last chunk event are coalesced into one.",
    )
    chunk_max_deltas: int = Field(
        16, alias="SOMA_CHUNK_MAX_DELTAS", ge=1, le=10_000,
        description="Most deltas coalesced into one chunk event.",
    )
    training_mode_policy: Literal["reject", "allow"] = Field(
        "reject", alias="SOMA_TRAINING_MODE_POLICY",
        description="Turns of a tenant whose training lock is active: 'reject' (a failed event says why) or "
        "'allow' (answered, events marked training_mode=true).",
    )

    # -- SSE bridge (streams/bridge/, `soma bridge`) ------------------------------------------------
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

    _split = field_validator(
        "admin_roles", "admin_users", "budget_thresholds", "bridge_cors_origins", mode="before"
    )(_split_csv)

    @field_validator("budget_thresholds")
    @classmethod
    def _thresholds_positive(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < share <= 10 for share in value):
            raise ValueError("expected shares of the budget such as 0.8,1.0 (each above 0, at most 10)")
        return sorted(set(value))

    # -- embeddings and semantic memory (agents/embeddings.py, agents/memory.py) ----------------------
    embeddings_backend: Literal["local", "openai"] = Field(
        "local", alias="SOMA_EMBEDDINGS_BACKEND",
        description="Embedding backend: local (sentence-transformers in the worker) or openai (an "
        "OpenAI-compatible /v1/embeddings endpoint).",
    )
    embeddings_model: str = Field(
        "all-MiniLM-L6-v2", alias="SOMA_EMBEDDINGS_MODEL", min_length=1,
        description="Embedding model: for local, all-MiniLM-L6-v2 (the packaged model) or a local "
        "sentence-transformers directory; for openai, the model name the endpoint serves.",
    )
    embeddings_base_url: str | None = Field(
        None, alias="SOMA_EMBEDDINGS_BASE_URL",
        description="Base URL of the OpenAI-compatible embeddings endpoint (e.g. https://api.openai.com/v1). "
        "Unset: OPENAI_BASE_URL.",
    )
    embeddings_api_key: str | None = Field(
        None, alias="SOMA_EMBEDDINGS_API_KEY",
        description="API key of the embeddings endpoint. Unset: OPENAI_API_KEY.",
    )
    embeddings_batch_size: int = Field(
        64, alias="SOMA_EMBEDDINGS_BATCH_SIZE", ge=1, le=2048,
        description="Texts per model call (local) or per request (openai); texts of many jobs are "
        "gathered into batches of this size.",
    )
    embeddings_max_jobs_per_batch: int = Field(
        32, alias="SOMA_EMBEDDINGS_MAX_JOBS_PER_BATCH", ge=1, le=10_000,
        description="Most embedding jobs the agent takes from the broker per batch (bounds the time "
        "one batch holds its results back).",
    )
    embeddings_timeout_seconds: float = Field(
        30.0, alias="SOMA_EMBEDDINGS_TIMEOUT_SECONDS", gt=0, le=600,
        description="Timeout of one request to the embeddings endpoint (openai backend).",
    )
    embeddings_chunk_chars: int = Field(
        800, alias="SOMA_EMBEDDINGS_CHUNK_CHARS", ge=50, le=100_000,
        description="Longest chunk of a document, in characters (chunks end at whitespace when they can).",
    )
    embeddings_chunk_overlap: int = Field(
        100, alias="SOMA_EMBEDDINGS_CHUNK_OVERLAP", ge=0, validate_default=True,
        description="Characters a chunk repeats from the end of the previous one; less than half "
        "of SOMA_EMBEDDINGS_CHUNK_CHARS.",
    )
    embeddings_max_document_chars: int = Field(
        100_000, alias="SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS", ge=1,
        description="Longest document text an upsert accepts; a longer one fails the job.",
    )
    qdrant_url: str | None = Field(
        None, alias="QDRANT_URL",
        description="Qdrant server (http://host:6333). Unset: Qdrant local mode in SOMA_DATA_DIR/qdrant "
        "(one worker process only).",
    )
    qdrant_api_key: str | None = Field(None, alias="QDRANT_API_KEY", description="API key of the Qdrant server.")
    qdrant_timeout_seconds: float = Field(
        10.0, alias="SOMA_QDRANT_TIMEOUT_SECONDS", gt=0, le=600,
        description="Timeout of one Qdrant call; a failing call is tried 3 times in all, with backoff.",
    )

    @field_validator("embeddings_chunk_overlap")
    @classmethod
    def _overlap_below_half_a_chunk(cls, value: int, info: Any) -> int:
        size = info.data.get("embeddings_chunk_chars")
        if size is not None and value * 2 >= size:
            raise ValueError(f"must be less than half of SOMA_EMBEDDINGS_CHUNK_CHARS ({size})")
        return value

    @model_validator(mode="after")
    def _openai_embeddings_need_an_endpoint(self) -> Settings:
        if self.embeddings_backend == "openai" and self.embeddings_endpoint is None:
            raise ValueError(
                "SOMA_EMBEDDINGS_BACKEND=openai needs SOMA_EMBEDDINGS_BASE_URL (or OPENAI_BASE_URL)"
            )
        return self

    @property
    def embeddings_endpoint(self) -> str | None:
        """Where the openai embeddings backend sends requests: its own URL, else the chat API's."""
        return self.embeddings_base_url or getattr(self, "openai_base_url", None)

    @property
    def embeddings_key(self) -> str | None:
        return self.embeddings_api_key or getattr(self, "openai_api_key", None)

    @property
    def qdrant_path(self) -> Path:
        """Where Qdrant local mode keeps its data when QDRANT_URL is unset."""
        return self.data_dir / "qdrant"


    @field_validator("lock_max_ttl_seconds")
    @classmethod
    def _max_not_below_default(cls, value: int, info: Any) -> int:
        default = info.data.get("lock_default_ttl_seconds")
        if default is not None and value < default:
            raise ValueError(f"must be at least SOMA_LOCK_DEFAULT_TTL_SECONDS ({default})")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment; raise :class:`SettingsError` naming each bad variable."""
        environ = os.environ if environ is None else environ
        aliases = {field.alias for field in cls.model_fields.values() if field.alias}
        values = {name: value for name, value in environ.items() if name in aliases and value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(cls, exc)) from None

    @property
    def bootstrap_servers(self) -> str:
        """Where the Kafka cluster is: the configured one, or the embedded broker's address."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def llm_base_url(self) -> str:
        """Where the chat model is: the configured API, or the embedded llama.cpp server's address."""
        return self.openai_base_url or f"http://127.0.0.1:{self.embedded_model_port}/v1"

    @property
    def uses_embedded_model(self) -> bool:
        return self.openai_base_url is None

    def is_admin(self, user: str, roles: list[str]) -> bool:
        return user in self.admin_users or any(role in self.admin_roles for role in roles)

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

    def group_instance_id(self, member: str) -> str | None:
        """The static group member id of one consumer of this worker (one per agent), or None (dynamic)."""
        return f"{self.stable_worker_id}.{member}" if self.static_membership else None

    @property
    def heartbeat_interval_ms(self) -> int:
        """A third of the session (at most 1 s): two heartbeats may be lost before the member is."""
        return max(100, min(1000, self.session_timeout_ms // 3))


def _describe(cls: type[Settings], exc: ValidationError) -> str:
    by_name = dict(cls.model_fields) | {field.alias: field for field in cls.model_fields.values() if field.alias}
    lines = ["invalid settings:"]
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings: its message names the variables
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        name = str(error["loc"][0])
        field = by_name.get(name)
        variable = field.alias if field and field.alias else name
        got = error.get("input")
        allowed = f" ({field.description})" if field and field.description else ""
        lines.append(f"  {variable}={got!r}: {error['msg']}{allowed}")
    return "\n".join(lines)


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"soma: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load_settings()
# Faust creates only the last level of its datadir; the data dir itself may not exist yet.
settings.data_dir.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
    store="rocksdb://",
    datadir=str(settings.data_dir / "faust"),
    autodiscover=["agents", "streams"],
    origin="faust_app",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    broker_rebalance_timeout=3,
    # Faust's own consumer group (its leader assignor) joins like the agents' groups do.
    broker_session_timeout=settings.session_timeout_ms / 1000,
    broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
    consumer_group_instance_id=settings.group_instance_id("faust"),
    web_enabled=settings.web_enabled,
    web_port=settings.web_port,
    web_bind=settings.web_bind,
    producer_linger_ms=5,
)


class SomaCommand(AppCommand):
    """Base of our own commands: run the handler on a plain event loop, not inside a Faust worker.

    Faust runs commands inside a worker service, which turns a usage error into a traceback; our
    commands are clients, so they run like any CLI: clean error message, meaningful exit code.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        args = self.args + args
        kwargs = {**self.kwargs, **kwargs}
        try:
            asyncio.run(self.run(*args, **kwargs))
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        raise SystemExit(0)


def command(*options: Any) -> Any:
    """Register an ``async def`` as a ``soma`` subcommand that runs as a plain CLI client."""
    return app.command(*options, base=SomaCommand)


@command()
async def dev(self: Any) -> None:
    """Run the local stack: the embedded broker (when KAFKA_BOOTSTRAP_SERVERS is unset), the embedded model
    server (when OPENAI_BASE_URL is unset) and a worker; Ctrl-C stops them all."""
    from connectors.exceptions import ConnectorError
    from connectors.local_stack import run_local_stack

    try:
        code = run_local_stack(settings.kafka_bootstrap_servers, settings.embedded_broker_port, settings.data_dir,
                               llm_base_url=settings.openai_base_url,
                               embedded_model_port=settings.embedded_model_port)
    except ConnectorError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


_FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


def main() -> None:
    """Entry point of the ``soma`` console script: Faust's CLI plus our commands."""
    argv = sys.argv[1:]
    if argv[:1] == ["worker"] and not any(arg in ("-l", "--loglevel") or arg.startswith("--loglevel=")
                                         for arg in argv):
        sys.argv.insert(2, f"--loglevel={_FAUST_LOG_LEVELS[settings.log_level]}")
    app.main()


if __name__ == "__main__":
    # Run the app of the importable module, not of ``__main__``: agents and commands register on
    # ``faust_app.app``, and a second App instance would start with none of them.
    import faust_app

    faust_app.main()
