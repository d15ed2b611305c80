"""The settings of one process: every section in one frozen model, read from the environment once.

Rules that span two sections (the embeddings endpoint defaulting to the chat API's, a worker's static
group member ids) live here; everything else lives with its section.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError, model_validator

from streams.settings.base import SettingsError
from streams.settings.bridge import BridgeSettings
from streams.settings.conversation import ConversationSettings
from streams.settings.embeddings import EmbeddingSettings
from streams.settings.engine import EngineSettings
from streams.settings.kafka import KafkaSettings
from streams.settings.locks import LockSettings
from streams.settings.usage import UsageSettings
from streams.settings.worker import WorkerSettings

__all__ = ["SECTIONS", "Settings"]

#: The sections in the order the README's settings table lists them.
SECTIONS = (KafkaSettings, WorkerSettings, EngineSettings, LockSettings, ConversationSettings, EmbeddingSettings,
            UsageSettings, BridgeSettings)


class Settings(BridgeSettings, UsageSettings, EmbeddingSettings, ConversationSettings, LockSettings, EngineSettings,
               WorkerSettings, KafkaSettings):
    """Every setting of the system; the field alias is the environment variable that sets it."""

    @model_validator(mode="after")
    def _openai_embeddings_need_an_endpoint(self) -> Settings:
        if self.embeddings_backend == "openai" and self.embeddings_endpoint is None:
            raise ValueError(
                "SOMA_EMBEDDINGS_BACKEND=openai needs SOMA_EMBEDDINGS_BASE_URL (or OPENAI_BASE_URL)"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment; raise :class:`SettingsError` naming each bad variable."""
        environ = os.environ if environ is None else environ
        aliases = {field.alias for field in cls.model_fields.values() if field.alias}
        values = {name: value for name, value in environ.items() if name in aliases and value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @property
    def embeddings_endpoint(self) -> str | None:
        """Where the openai embeddings backend sends requests: its own URL, else the chat API's."""
        return self.embeddings_base_url or self.openai_base_url

    @property
    def embeddings_key(self) -> str | None:
        return self.embeddings_api_key or self.openai_api_key

    @property
    def qdrant_path(self) -> Path:
        """Where Qdrant local mode keeps its data when QDRANT_URL is unset."""
        return self.data_dir / "qdrant"

    def group_instance_id(self, member: str) -> str | None:
        """The static group member id of one consumer of this worker (one per agent), or None (dynamic)."""
        return f"{self.stable_worker_id}.{member}" if self.static_membership else None


def _describe(exc: ValidationError) -> str:
    fields = Settings.model_fields
    by_name = dict(fields) | {field.alias: field for field in fields.values() if field.alias}
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
