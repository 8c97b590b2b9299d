"""Keywords: the terms TF-IDF weighs most across a document's chunks.

A term's score is its TF-IDF weight summed over the chunks, unnormalised: it grows with how
often the term occurs, and the IDF (over the chunks) favours terms that dominate parts of
the document over words spread thinly everywhere. Give the chunks without their overlap
(:func:`raypipe.documents.chunking.unshared_texts`) so that no occurrence counts twice.

Terms are words and two-word phrases. A phrase is only formed from adjacent words (no stop
word, number or punctuation in between, unlike scikit-learn's built-in bigrams, which join
the words around a removed stop word), and is only kept if it recurs as a unit. A word that
mostly occurs inside a kept phrase gives way to it, so "carbon dioxide" does not come with
"carbon" and "dioxide" beside it, while "light" stays beside "light reactions" when the
document also uses it on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

#: A phrase must occur at least this often...
MIN_PHRASE_COUNT = 2
#: ...and make up this share of its rarer word's occurrences to count as a phrase.
PHRASE_SHARE = 0.5
#: A word whose occurrences are at least this share inside one phrase is left to the phrase.
SUBSUMED_SHARE = 0.75

_TOKENS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
_POSSESSIVE = re.compile(r"['’]s$")


def terms(text: str) -> list[str]:
    """The analyzer: lower-cased words (no stop words, no numbers, at least two characters)
    and the two-word phrases of words that stand next to each other in ``text``."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    found: list[str] = []
    previous: str | None = None
    for token in _TOKENS.findall(text.lower()):
        word = _POSSESSIVE.sub("", token)
        if len(word) < 2 or word in ENGLISH_STOP_WORDS or not any(c.isalpha() for c in word):
            previous = None  # punctuation, numbers and stop words break phrases
            continue
        found.append(word)
        if previous is not None:
            found.append(f"{previous} {word}")
        previous = word
    return found


def top_keywords(chunks: Sequence[str], n: int) -> list[str]:
    """The ``n`` terms with the highest TF-IDF weight summed over ``chunks``, best first
    (ties alphabetically); fewer when the text has fewer terms."""
    if not any(terms(chunk) for chunk in chunks):
        return []
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    # CountVectorizer + TfidfTransformer is TfidfVectorizer, keeping the raw counts too.
    counted = CountVectorizer(analyzer=terms).fit(chunks)
    counts_matrix = counted.transform(chunks)
    weights = TfidfTransformer(norm=None).fit_transform(counts_matrix)
    vocabulary: list[str] = counted.get_feature_names_out().tolist()
    counts = dict(
        zip(vocabulary, np.asarray(counts_matrix.sum(axis=0)).ravel().tolist(), strict=True)
    )
    scores = dict(zip(vocabulary, np.asarray(weights.sum(axis=0)).ravel().tolist(), strict=True))
    return _select(counts, scores, n)


def _select(counts: dict[str, int], scores: dict[str, float], n: int) -> list[str]:
    phrases = [term for term in counts if " " in term and _is_phrase(term, counts)]
    ranked = {term: scores[term] for term in counts if " " not in term}
    for phrase in phrases:
        ranked[phrase] = scores[phrase]
    for phrase in phrases:
        for word in phrase.split():
            if word in ranked and counts[phrase] >= SUBSUMED_SHARE * counts[word]:
                ranked[phrase] = max(ranked[phrase], scores[word])
                del ranked[word]
    return sorted(ranked, key=lambda term: (-ranked[term], term))[:n]


def _is_phrase(phrase: str, counts: dict[str, int]) -> bool:
    count = counts[phrase]
    rarer = min(counts[word] for word in phrase.split())
    return count >= MIN_PHRASE_COUNT and count >= PHRASE_SHARE * rarer
