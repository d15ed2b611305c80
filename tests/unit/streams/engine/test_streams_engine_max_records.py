"""Per-agent batch size: ``@agent(..., max_records=...)`` caps an agent's batches below the global setting."""

from __future__ import annotations

from typing import Any

from streams.catalog import EMBEDDING_JOBS
from streams.engine.runner import AgentRunner, AgentSpec
from streams.settings import Settings


async def _noop(stream: Any, context: Any) -> None:
    return None


def test_max_records_defaults_to_the_global_setting_and_may_depend_on_settings() -> None:
    settings = Settings.from_env({"SOMA_BATCH_MAX_RECORDS": "500", "SOMA_EMBEDDINGS_MAX_JOBS_PER_BATCH": "7"})

    default = AgentRunner(AgentSpec("a", EMBEDDING_JOBS, _noop), settings, producer=None)  # type: ignore[arg-type]
    fixed = AgentRunner(AgentSpec("b", EMBEDDING_JOBS, _noop, max_records=3), settings, producer=None)  # type: ignore[arg-type]
    derived = AgentRunner(
        AgentSpec("c", EMBEDDING_JOBS, _noop, max_records=lambda s: s.embeddings_max_jobs_per_batch),
        settings, producer=None,  # type: ignore[arg-type]
    )

    assert (default.max_records, fixed.max_records, derived.max_records) == (500, 3, 7)
