"""The configured embedding models: where each comes from, and loading it with a fallback."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raypipe.config_groups import EmbeddingSettings
from raypipe.exceptions import InvalidInput, PermanentError

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class Embeddings:
    """Vectors (float32, one row per text, in input order), the model that made them and
    the backend it ran on (what a result names: vectors of one model on two backends may
    differ in their last digits)."""

    vectors: np.ndarray
    model: str
    backend: str


class EmbeddingModel:
    """A loaded sentence-transformers model under its configured name."""

    def __init__(self, name: str, model: Any, batch_size: int):
        self.name = name
        self.model = model
        self.batch_size = batch_size
        self.dim = int(model.get_embedding_dimension())
        self.device = str(model.device)
        #: sentence-transformers' own name for how it runs the model ("torch").
        self.backend = str(model.backend)

    def encode(self, texts: list[str], normalize: bool = True) -> Embeddings:
        if not texts:
            return self._made(np.zeros((0, self.dim), dtype=np.float32))
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return self._made(np.asarray(vectors, dtype=np.float32))

    def _made(self, vectors: np.ndarray) -> Embeddings:
        return Embeddings(vectors, self.name, self.backend)

    def encode_until(self, texts: list[str], stop: Callable[[], bool]) -> np.ndarray | None:
        """The rows of ``texts`` as :meth:`encode` makes them (not normalised), a model batch
        at a time, or None as soon as ``stop()`` is true between two batches.

        The texts are sorted by length first, as ``encode`` sorts them (so each call here
        is one of its batches: the same padding, the same vectors)."""
        if len(texts) <= self.batch_size:
            return self.encode(texts, normalize=False).vectors
        order = np.argsort([-len(text) for text in texts])
        ordered = [texts[i] for i in order]
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            if stop():
                return None
            part = ordered[start : start + self.batch_size]
            vectors[order[start : start + len(part)]] = self.encode(part, normalize=False).vectors
        return vectors


def check_model(config: EmbeddingSettings, name: str | None) -> str:
    """The model's configured name; :class:`InvalidInput` naming the known ones otherwise."""
    name = name or config.model
    if name not in config.models:
        known = ", ".join(sorted(config.models))
        raise InvalidInput(
            f"payload.model: unknown model {name!r} (known: {known})",
            details=[
                {"loc": ["payload", "model"], "msg": f"unknown model {name!r}; known: {known}"}
            ],
        )
    return name


def model_path(source: str) -> Path:
    """A model folder from a registry entry: a path, or ``package:<module>`` whose
    ``MODEL_DIR`` (or ``get_model_path()``) is the folder, as PyPI model packages ship it."""
    if source.startswith(PACKAGE_PREFIX):
        module = importlib.import_module(source[len(PACKAGE_PREFIX) :])
        getter = getattr(module, "get_model_path", None)
        return Path(getter() if getter else module.MODEL_DIR)
    return Path(source).expanduser()


def load(
    config: EmbeddingSettings, name: str | None = None, device: str | None = None
) -> EmbeddingModel:
    """Load ``name`` (default: the configured model); if it cannot be loaded, the
    configured fallback. Models come from local folders only (no hub at run time)."""
    name = check_model(config, name)
    candidates = [name]
    fallback = config.fallback_model
    if fallback and fallback != name:
        candidates.append(fallback)
    problems = []
    for candidate in candidates:
        try:
            return _load_one(config, candidate, device)
        except Exception as exc:
            log.warning("embedding model %s could not be loaded: %s", candidate, exc)
            problems.append(f"{candidate}: {type(exc).__name__}: {exc}")
    raise PermanentError("no embedding model could be loaded (" + "; ".join(problems) + ")")


def _load_one(config: EmbeddingSettings, name: str, device: str | None) -> EmbeddingModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    source = config.models.get(name)
    if source is None:
        raise KeyError(f"{name!r} is not in embedding_models")
    path = model_path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}")
    model = SentenceTransformer(str(path), device=device or _device(), local_files_only=True)
    return EmbeddingModel(name, model, config.batch_size)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_cache: dict[tuple[str, str | None, int], EmbeddingModel] = {}


def load_cached(config: EmbeddingSettings, name: str | None = None) -> EmbeddingModel:
    """One loaded model per (name, fallback, batch size) per process."""
    key = (
        check_model(config, name),
        config.fallback_model,
        config.batch_size,
    )
    if key not in _cache:
        _cache[key] = load(config, key[0])
    return _cache[key]
