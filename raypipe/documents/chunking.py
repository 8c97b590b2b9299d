"""Cutting text into overlapping chunks of at most ``size`` characters, at natural breaks.

A chunk ends at the last paragraph break inside its window, else the last sentence end,
else the last space, looking only at the last half of the window (and past the overlap, so
the next chunk moves forward by a fair step); only a run with no break there is cut
mid-word. The next chunk starts at most ``overlap`` characters before the previous end, at
the first sentence start in that stretch, else the first word start. Pure and
deterministic: the same text and sizes give the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_PARAGRAPH_BREAKS = re.compile(r"\n\s*\n")
_SENTENCE_BREAKS = re.compile(r"[.!?…][\"'”’)\]]*\s")
_SPACES = re.compile(r"\s")
#: Where a chunk may end, best first, and where in each match the chunk's text stops.
_BREAKS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], int]], ...] = (
    (_PARAGRAPH_BREAKS, lambda match: match.start()),
    (_SENTENCE_BREAKS, lambda match: match.end() - 1),
    (_SPACES, lambda match: match.start()),
)


@dataclass(frozen=True)
class Chunk:
    """``text == document[start:end]``; chunks are numbered from 0 in document order."""

    index: int
    start: int
    end: int
    text: str

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "start": self.start, "end": self.end, "text": self.text}


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Chunks covering every non-space character of ``text``; see the module docstring."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size} and {overlap}")
    chunks: list[Chunk] = []
    start = _skip_spaces(text, 0, len(text))
    stop = len(text.rstrip())
    while start < stop:
        end = _chunk_end(text, start, stop, size, overlap)
        chunks.append(Chunk(len(chunks), start, end, text[start:end]))
        if end >= stop:
            break
        start = _next_start(text, start, end, overlap)
    return chunks


def _chunk_end(text: str, start: int, stop: int, size: int, overlap: int) -> int:
    limit = start + size
    if limit >= stop:
        return stop
    # Not so early that the next chunk, starting `overlap` before this end, barely moves.
    earliest = start + max(size // 2, overlap + 1)
    cut = limit
    for pattern, cut_at in _BREAKS:
        match = _last_match(pattern, text, earliest, limit + 1)
        if match is not None:
            cut = cut_at(match)
            break
    return start + len(text[start:cut].rstrip())


def _last_match(pattern: re.Pattern[str], text: str, first: int, last: int) -> re.Match[str] | None:
    """The last match of ``pattern`` lying wholly in ``text[first:last]``."""
    matches = list(pattern.finditer(text, first, last))
    return matches[-1] if matches else None


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the chunk after ``text[start:end]`` begins: inside the last ``overlap``
    characters, preferring a sentence start, then a word start; ``end`` at the latest."""
    earliest = max(end - overlap, start + 1)
    if earliest >= end:
        return _skip_spaces(text, end, len(text))
    sentence = _SENTENCE_BREAKS.search(text, earliest - 1, end)
    if sentence is not None:
        begin = _skip_spaces(text, sentence.end(), end)
        if begin < end:
            return begin
    space = _SPACES.search(text, earliest - 1, end)
    if space is not None:
        begin = _skip_spaces(text, space.end(), end)
        if begin < end:
            return begin
    return _skip_spaces(text, end, len(text))


def _skip_spaces(text: str, index: int, stop: int) -> int:
    while index < stop and text[index].isspace():
        index += 1
    return index


def unshared_texts(text: str, chunks: list[Chunk]) -> list[str]:
    """Each chunk's text without what it shares with the chunk before it: the document cut
    into consecutive pieces, so statistics over chunks count no word twice."""
    pieces = []
    previous_end = 0
    for chunk in chunks:
        pieces.append(text[max(chunk.start, previous_end) : chunk.end])
        previous_end = chunk.end
    return pieces
