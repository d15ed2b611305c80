"""The chunking rule of agents/chunking.py: bounded, covering, overlapping, deterministic."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.chunking import chunk_text

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=30)
texts = st.lists(st.tuples(words, st.sampled_from([" ", "\n", "  ", "\t", " \n "])), max_size=120).map(
    lambda parts: "".join(word + space for word, space in parts)
)


@given(text=texts, size=st.integers(20, 200), overlap_share=st.floats(0, 0.49))
@settings(max_examples=300, deadline=None)
def test_chunks_are_bounded_cover_the_text_and_advance(text: str, size: int, overlap_share: float) -> None:
    overlap = int(size * overlap_share)
    chunks = chunk_text(text, size, overlap)

    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for chunk in chunks:
        assert 0 < len(chunk.text) <= size
        assert chunk.text == text[chunk.start:chunk.end] == chunk.text.strip()
        for position in range(chunk.start, chunk.end):
            covered[position] = True
    assert all(covered[i] or text[i].isspace() for i in range(len(text))), "every non-space character is in a chunk"
    starts = [chunk.start for chunk in chunks]
    assert starts == sorted(set(starts)), "every chunk starts after the previous one"
    assert chunk_text(text, size, overlap) == chunks, "deterministic"


def test_short_text_is_one_trimmed_chunk() -> None:
    (chunk,) = chunk_text("  a short note \n", 100, 10)
    assert (chunk.text, chunk.start, chunk.end) == ("a short note", 2, 14)


def test_whitespace_only_text_has_no_chunks() -> None:
    assert chunk_text(" \n\t ", 100, 10) == []
    assert chunk_text("", 100, 10) == []


def test_long_prose_is_cut_at_word_boundaries_with_overlap() -> None:
    text = " ".join(f"word{i}" for i in range(200))
    chunks = chunk_text(text, 100, 20)

    assert len(chunks) > 5
    for previous, current in itertools.pairwise(chunks):
        assert not text[previous.end:previous.end + 1].strip(), "a chunk ends before a space"
        assert current.start == 0 or text[current.start - 1] == " ", "a chunk starts at a word"
        shared = previous.end - current.start
        assert 0 < shared <= 20, "consecutive chunks share at most `overlap` characters"


def test_a_word_longer_than_a_chunk_is_cut_hard() -> None:
    chunks = chunk_text("x" * 250, 100, 20)
    assert [(chunk.start, chunk.end) for chunk in chunks] == [(0, 100), (80, 180), (160, 250)]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 5), (10, -1), (100, 60)])
def test_invalid_parameters_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", size, overlap)
