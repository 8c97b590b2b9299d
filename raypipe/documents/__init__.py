"""Document processing as pure functions: text extraction, chunking, keywords, summaries.

No Ray and no job context here: :mod:`raypipe.processors.document` wires these into a job.
Bad input raises :class:`~raypipe.exceptions.PermanentError`.
"""

from __future__ import annotations

from raypipe.documents.chunking import Chunk, chunk_text, unshared_texts
from raypipe.documents.extract import FORMATS, extract_text, resolve_format
from raypipe.documents.keywords import top_keywords
from raypipe.documents.sentences import Sentence, split_sentences
from raypipe.documents.summary import candidate_sentences, centroid_scores, summarize

__all__ = [
    "FORMATS",
    "Chunk",
    "Sentence",
    "candidate_sentences",
    "centroid_scores",
    "chunk_text",
    "extract_text",
    "resolve_format",
    "split_sentences",
    "summarize",
    "top_keywords",
    "unshared_texts",
]
