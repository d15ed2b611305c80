"""Settings of conversation turns and the chat model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from streams.settings.base import Section

__all__ = ["ConversationSettings"]


class ConversationSettings(Section):
    section_title: ClassVar[str] = "Conversation turns and the chat model"

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
        description="`SOMA_BATCH_WAIT_MS` for the conversation agent: a person waits for the first token, so "
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

    @property
    def llm_base_url(self) -> str:
        """Where the chat model is: the configured API, or the embedded llama.cpp server's address."""
        return self.openai_base_url or f"http://127.0.0.1:{self.embedded_model_port}/v1"

    @property
    def uses_embedded_model(self) -> bool:
        return self.openai_base_url is None
