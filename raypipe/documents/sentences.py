"""Sentence boundaries, by rule: good enough for extractive summaries, with no model to load.

A sentence ends at ``.``, ``!``, ``?`` or ``…`` (plus closing quotes or brackets) followed by
whitespace and a character that is not lower case, unless the word before the period is a
common abbreviation or an initial. A blank line (a paragraph, a heading, a list item) always
ends one; a single line break does not, since PDFs and plain text wrap lines mid-sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABBREVIATIONS = frozenset((
    "al", "approx", "apr", "aug", "ca", "cf", "co", "corp", "dec", "dept", "dr", "e.g", "eg",
    "est", "etc", "feb", "fig", "figs", "gen", "gov", "i.e", "ie", "inc", "jan", "jr", "jul",
    "jun", "ltd", "mar", "mr", "mrs", "ms", "mt", "no", "nos", "nov", "oct", "p", "pp", "prof",
    "rev", "sen", "sep", "sept", "sgt", "sr", "st", "vol", "vols", "vs",
))  # fmt: skip

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_ENDINGS = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+\S)")
_WORD_BEFORE = re.compile(r"([\w.]+)$")
#: How far back to look for the word before a period (abbreviations are short).
_LOOKBEHIND = 32


@dataclass(frozen=True)
class Sentence:
    """A sentence: where it lies in the text, and its words joined by single spaces."""

    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[Sentence]:
    """Every sentence of ``text``, in order."""
    sentences: list[Sentence] = []
    for first, last in _paragraphs(text):
        start = first
        for ending in _ENDINGS.finditer(text, first, last):
            if _is_boundary(text, ending.start(), ending.end()):
                sentences.append(_sentence(text, start, ending.end()))
                start = _skip_spaces(text, ending.end())
        if start < last:
            sentences.append(_sentence(text, start, last))
    return sentences


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of text between blank lines, whitespace trimmed."""
    spans = []
    start = 0
    for cut in (*_PARAGRAPH_BREAK.finditer(text), None):
        end = len(text) if cut is None else cut.start()
        first = _skip_spaces(text, start)
        last = len(text[first:end].rstrip()) + first
        if first < last:
            spans.append((first, last))
        if cut is not None:
            start = cut.end()
    return spans


def _is_boundary(text: str, mark: int, after: int) -> bool:
    following = text[_skip_spaces(text, after)]
    if following.islower():
        return False
    if text[mark] != ".":
        return True
    before = _WORD_BEFORE.search(text, max(0, mark - _LOOKBEHIND), mark)
    if before is None:
        return True
    word = before.group(1).lower()
    is_initial = len(word) == 1 and word.isalpha()
    return not (is_initial or word in ABBREVIATIONS)


def _skip_spaces(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _sentence(text: str, start: int, end: int) -> Sentence:
    return Sentence(start, end, " ".join(text[start:end].split()))
