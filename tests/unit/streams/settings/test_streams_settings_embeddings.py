"""Settings of embeddings and semantic memory: defaults and the rules across variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError


def test_defaults_are_the_embedded_local_stack() -> None:
    settings = Settings.from_env({})
    assert settings.embeddings_backend == "local"
    assert settings.embeddings_model == "all-MiniLM-L6-v2"
    assert settings.qdrant_url is None
    assert settings.qdrant_path == Path("./data") / "qdrant"
    assert settings.embeddings_chunk_overlap * 2 < settings.embeddings_chunk_chars
    assert settings.embeddings_endpoint is None


def test_openai_backend_needs_an_endpoint() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SOMA_EMBEDDINGS_BACKEND": "openai"})
    assert "SOMA_EMBEDDINGS_BASE_URL" in str(raised.value)
    settings = Settings.from_env({"SOMA_EMBEDDINGS_BACKEND": "openai",
                                  "SOMA_EMBEDDINGS_BASE_URL": "http://127.0.0.1:8000/v1",
                                  "SOMA_EMBEDDINGS_API_KEY": "k"})
    assert settings.embeddings_endpoint == "http://127.0.0.1:8000/v1" and settings.embeddings_key == "k"


def test_overlap_must_stay_below_half_a_chunk() -> None:
    with pytest.raises(SettingsError, match="SOMA_EMBEDDINGS_CHUNK_OVERLAP"):
        Settings.from_env({"SOMA_EMBEDDINGS_CHUNK_CHARS": "200", "SOMA_EMBEDDINGS_CHUNK_OVERLAP": "100"})
    assert Settings.from_env({"SOMA_EMBEDDINGS_CHUNK_CHARS": "200",
                              "SOMA_EMBEDDINGS_CHUNK_OVERLAP": "99"}).embeddings_chunk_overlap == 99


@pytest.mark.parametrize(("variable", "value"), [
    ("SOMA_EMBEDDINGS_BACKEND", "tfidf"),
    ("SOMA_EMBEDDINGS_BATCH_SIZE", "0"),
    ("SOMA_EMBEDDINGS_MAX_JOBS_PER_BATCH", "0"),
    ("SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS", "0"),
    ("SOMA_QDRANT_TIMEOUT_SECONDS", "0"),
])
def test_out_of_range_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})
