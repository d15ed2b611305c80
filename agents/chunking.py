"""How a document's text is cut into the chunks that are embedded and stored.

The rule (``size`` = ``SOMA_EMBEDDINGS_CHUNK_CHARS``, ``overlap`` = ``SOMA_EMBEDDINGS_CHUNK_OVERLAP``,
``overlap < size / 2``; lengths are in characters, i.e. Unicode code points):

1. A text of at most ``size`` characters (after trimming whitespace at both ends) is one chunk.
2. Otherwise a chunk starts at position ``s`` and takes up to ``size`` characters. If the text goes on
   after that window, the chunk ends at the last whitespace inside the window that lies beyond the
   first ``overlap`` characters, so words are not cut; when the window has no such whitespace (one
   very long "word") it is cut at exactly ``size`` characters.
3. The next chunk starts ``overlap`` characters before the end of the previous one, moved forward to
   the start of a word (unless that would pass the previous chunk's end), so consecutive chunks share
   about ``overlap`` characters of context. Every chunk starts after the previous one started, so the
   process always ends.
4. Chunks are trimmed of surrounding whitespace; whitespace-only pieces are dropped.

It is deterministic: the same text and settings give the same chunks, which — with point ids derived
from tenant, collection, document id, chunk number and model — makes re-upserting a document
overwrite its points rather than add to them. Every non-whitespace character of the text is in at
least one chunk. With all-MiniLM-L6-v2 (256 word pieces at most) the default of 800 characters stays
within the model's window for ordinary prose (about 4 characters per word piece).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a text: ``text == source[start:end]`` (already trimmed)."""

    index: int
    start: int
    end: int
    text: str


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Cut ``text`` into chunks by the rule in the module docstring."""
    if size < 1:
        raise ValueError("size must be at least 1")
    if overlap < 0 or overlap * 2 >= size:
        raise ValueError("overlap must be at least 0 and less than half of size")
    pieces: list[tuple[int, int]] = []
    length = len(text)
    start = _skip_space(text, 0, length)
    while start < length:
        window_end = min(start + size, length)
        end = window_end
        if window_end < length:
            cut = _last_space(text, start + overlap + 1, window_end)
            if cut is not None:
                end = cut
        pieces.append((start, end))
        if end >= length:
            break
        next_start = _word_start(text, max(end - overlap, start + 1), end)
        start = _skip_space(text, next_start, length)
    chunks: list[Chunk] = []
    for start, end in pieces:
        trimmed_start, trimmed_end = _trim(text, start, end)
        if trimmed_start < trimmed_end:
            chunks.append(Chunk(len(chunks), trimmed_start, trimmed_end, text[trimmed_start:trimmed_end]))
    return chunks


def _skip_space(text: str, position: int, limit: int) -> int:
    while position < limit and text[position].isspace():
        position += 1
    return position


def _last_space(text: str, low: int, high: int) -> int | None:
    """Position of the last whitespace character in ``text[low:high + 1]``, if any.

    ``high`` itself is included: a window that ends exactly before a space is a clean cut.
    """
    for position in range(min(high, len(text) - 1), low - 1, -1):
        if text[position].isspace():
            return position
    return None


def _word_start(text: str, position: int, limit: int) -> int:
    """``position`` moved forward to the start of a word, but not to or past ``limit``."""
    if position <= 0 or text[position - 1].isspace():
        return position
    moved = position
    while moved < limit and not text[moved].isspace():
        moved += 1
    return moved if moved < limit else position


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
