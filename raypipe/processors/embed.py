"""``embed.texts``: sentence embeddings on the warm model actors, saved as an ``.npy``."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raypipe.artifacts import REF_PATTERN
from raypipe.config import Settings
from raypipe.context import JobContext
from raypipe.embedding.models import check_model
from raypipe.exceptions import InvalidInput, PermanentError
from raypipe.registry import processor

ARTIFACT = "embeddings.npy"


class EmbedPayload(BaseModel):
    """``texts``, or ``texts_artifact``: another job's text artifact, one text per line."""

    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = Field(default=None, min_length=1)
    texts_artifact: str | None = Field(default=None, pattern=REF_PATTERN)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    normalize: bool = True

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if texts is not None:
            check_texts(texts, _settings(info))
        return texts

    @model_validator(mode="after")
    def _one_source(self) -> EmbedPayload:
        if (self.texts is None) == (self.texts_artifact is None):
            raise ValueError("give exactly one of texts or texts_artifact")
        return self

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str | None, info: ValidationInfo) -> str | None:
        settings = _settings(info)
        if model is not None and settings is not None:
            try:
                check_model(settings.embeddings, model)
            except InvalidInput as exc:
                raise ValueError(exc.details[0]["msg"]) from None
        return model


def _settings(info: ValidationInfo) -> Settings | None:
    return (info.context or {}).get("settings")


def check_texts(texts: list[str], settings: Settings | None) -> None:
    """No blank texts, and no more than the configured limit."""
    limit = settings.embeddings.max_texts if settings else None
    if limit is not None and len(texts) > limit:
        raise ValueError(f"at most {limit} texts per job (got {len(texts)})")
    blank = next((i for i, text in enumerate(texts) if not text.strip()), None)
    if blank is not None:
        raise ValueError(f"texts[{blank}] is empty: every text needs some non-blank characters")


@processor("embed.texts", payload=EmbedPayload, queue="embeddings", pool="embeddings")
def embed_texts(payload: EmbedPayload, ctx: JobContext) -> dict[str, Any]:
    """Embed texts (float32, one row per text, input order) into ``embeddings.npy``.

    Runs on the ``embeddings`` pool, beside the loaded model: the texts of concurrent jobs
    are merged into model batches there.
    """
    texts = payload.texts if payload.texts is not None else _lines(ctx, payload.texts_artifact)
    unique = len(set(texts))
    ctx.progress(0, f"0/{unique} unique texts", stage="encode")
    embeddings = ctx.embed(
        texts,
        model=payload.model,
        normalize=payload.normalize,
        on_chunk=lambda done, total: ctx.progress(
            95 * done / total, f"{done}/{total} unique texts", stage="encode"
        ),
    )
    buffer = io.BytesIO()
    np.save(buffer, embeddings.vectors, allow_pickle=False)
    ctx.write_artifact(ARTIFACT, buffer.getvalue())
    ctx.progress(100, f"{len(texts)} texts", stage="save")
    return {
        "count": len(texts),
        "unique": unique,
        "dim": int(embeddings.vectors.shape[1]),
        "model": embeddings.model,
        "backend": embeddings.backend,
        "normalized": payload.normalize,
        "artifact": ARTIFACT,
    }


def _lines(ctx: JobContext, ref: str | None) -> list[str]:
    assert ref is not None
    try:
        texts = ctx.read_artifact(ref).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise PermanentError(f"texts_artifact {ref}: not UTF-8 text") from None
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise PermanentError(f"texts_artifact {ref}: no texts in it")
    try:
        check_texts(texts, ctx.settings)
    except ValueError as exc:
        raise PermanentError(f"texts_artifact {ref}: {exc}") from None
    return texts
