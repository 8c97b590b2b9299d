"""Extractive summaries: the sentences whose embeddings lie closest to the document's.

The document's embedding is the centroid of its chunk embeddings; sentences are ranked by
cosine similarity to it and the best ``k`` are returned in document order.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Shorter sentences (headings, captions, list fragments) make poor summary sentences.
MIN_WORDS = 4


def candidate_sentences(sentences: Iterable[str]) -> list[str]:
    """The sentences worth embedding for a summary: each distinct one once, in order of
    first appearance, at least :data:`MIN_WORDS` words long (all of them if none is)."""
    distinct = list(dict.fromkeys(sentence for sentence in sentences if sentence))
    long_enough = [sentence for sentence in distinct if len(sentence.split()) >= MIN_WORDS]
    return long_enough or distinct


def centroid_scores(vectors: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``vectors`` to ``centroid``."""
    vectors = np.asarray(vectors, dtype=np.float64)
    centroid = np.asarray(centroid, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(centroid)
    return (vectors @ centroid) / np.maximum(norms, 1e-12)


def summarize(sentences: list[str], vectors: np.ndarray, centroid: np.ndarray, k: int) -> str:
    """The ``k`` sentences closest to ``centroid`` (earlier ones win ties), joined in the
    order they have in ``sentences``. ``vectors`` holds one row per sentence."""
    if len(sentences) != len(vectors):
        raise ValueError(f"{len(sentences)} sentences but {len(vectors)} vectors")
    if not sentences:
        return ""
    best = np.argsort(-centroid_scores(vectors, centroid), kind="stable")[:k]
    return " ".join(sentences[index] for index in sorted(best.tolist()))
