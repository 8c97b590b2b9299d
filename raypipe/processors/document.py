"""document.process: text, chunks, embeddings, keywords and a summary from one document.

The job runs as a small DAG: ``extract`` (in a Ray task, except for plain text) → ``chunk``
(here: cheap) → ``embed`` (the ``embeddings`` pool) → ``keywords`` and ``summary`` side by
side in Ray tasks. It declares one CPU: Ray lends it to the stage tasks while the processor
waits on them, so a document never needs more than admission gave it. Each stage but
``embed`` has a CPU budget (``RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S``) where its work runs, in a
task or here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raypipe.artifacts import REF_PATTERN
from raypipe.context import JobContext
from raypipe.documents.chunking import chunk_text, unshared_texts
from raypipe.documents.extract import Limits, extract_text, resolve_format
from raypipe.documents.keywords import top_keywords
from raypipe.documents.sentences import split_sentences
from raypipe.documents.stages import StageLog, StageOutcome, budgeted, run_timed
from raypipe.documents.summary import candidate_sentences, summarize
from raypipe.processors.inputs import check_input_url, load_input
from raypipe.registry import processor

STAGES = ("extract", "chunk", "embed", "keywords", "summary")
SOURCES = ("text", "document_b64", "document_url", "document_artifact")
ARTIFACTS = ("text.txt", "chunks.jsonl", "chunk_embeddings.npy")

#: Where each stage starts on the job's 0–100 progress scale.
PROGRESS = {"extract": 0.0, "chunk": 10.0, "embed": 15.0, "analyse": 80.0, "done": 100.0}


class DocumentPayload(BaseModel):
    """One document from exactly one source, and how to cut and condense it."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, description="the document itself")
    document_b64: str | None = Field(default=None, min_length=1, description="file, base64")
    document_url: str | None = Field(
        default=None, max_length=2048, description="http(s) URL of the file"
    )
    document_artifact: str | None = Field(
        default=None, pattern=REF_PATTERN, description='another job\'s file: "<job id>/<name>"'
    )
    filename: str | None = Field(
        default=None, min_length=1, max_length=255, description="its extension picks the format"
    )
    format: Literal["txt", "md", "html", "pdf"] | None = Field(
        default=None, description="overrides the filename's extension"
    )
    chunk_size: int = Field(default=800, ge=100, le=20_000, description="characters per chunk")
    chunk_overlap: int = Field(default=100, ge=0, description="characters shared by neighbours")
    keywords: int = Field(default=10, ge=1, le=100)
    summary_sentences: int = Field(default=3, ge=1, le=50)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("document_url")
    @classmethod
    def _fetchable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_input_url(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> DocumentPayload:
        given = [name for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(SOURCES)} (got {', '.join(given) or 'none'})"
            )
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than"
                f" chunk_size ({self.chunk_size})"
            )
        if self.text is not None and self.format == "pdf":
            raise ValueError("format 'pdf' needs the file's bytes, not text")
        return self


@processor("document.process", queue="documents", num_cpus=1, uses=("embeddings",))
def process_document(payload: DocumentPayload, ctx: JobContext) -> dict[str, Any]:
    """Extract a document's text, chunk and embed it, and find its keywords and summary."""
    cpu_s = ctx.settings.documents.max_stage_cpu_s
    stages = StageLog(STAGES, cpu_s)

    with stages.run("extract"):
        ctx.progress(PROGRESS["extract"], "reading the document", stage="extract")
        fmt, text = _extract(payload, ctx, cpu_s)
        ctx.write_artifact("text.txt", text)
    if ctx.is_cancelled():
        return _stopped(stages)

    with stages.run("chunk"):
        ctx.progress(PROGRESS["chunk"], f"chunking {len(text)} characters", stage="chunk")
        chunks = chunk_text(text, payload.chunk_size, payload.chunk_overlap)
        chunk_texts = [chunk.text for chunk in chunks]
        sentences = split_sentences(text)
        candidates = candidate_sentences(sentence.text for sentence in sentences)
        lines = (json.dumps(chunk.to_dict(), ensure_ascii=False) + "\n" for chunk in chunks)
        ctx.write_artifact("chunks.jsonl", "".join(lines))
    if ctx.is_cancelled():
        return _stopped(stages)

    # The model's work is the pool's, bounded by the document's text (and run here only by
    # a local runner): no budget on this thread's share of it.
    with stages.run("embed", budgeted=False):
        chunk_vectors, sentence_vectors, model = _embed(ctx, chunk_texts, candidates)
        ctx.write_artifact("chunk_embeddings.npy", _npy(chunk_vectors))
    if ctx.is_cancelled():
        return _stopped(stages)

    ctx.progress(PROGRESS["analyse"], "keywords and summary", stage="keywords+summary")
    outcomes = _analyse(
        ctx,
        cpu_s,
        keywords=partial(top_keywords, unshared_texts(text, chunks), payload.keywords),
        summary=partial(
            summarize,
            candidates,
            sentence_vectors,
            chunk_vectors.mean(axis=0),
            payload.summary_sentences,
        ),
    )
    values = stages.collect(outcomes)
    ctx.progress(PROGRESS["done"], "done")
    return {
        "chars": len(text),
        "words": len(text.split()),
        "sentences": len(sentences),
        "chunks": len(chunks),
        "keywords": values["keywords"],
        "summary": values["summary"],
        "model": model,
        "format": fmt,
        "stages": stages.as_dict(),
        "artifacts": list(ARTIFACTS),
    }


def _extract(payload: DocumentPayload, ctx: JobContext, cpu_s: float) -> tuple[str, str]:
    """(format, text). Parsing runs in a Ray task of its own, within the stage's CPU budget
    there, as a large PDF or page is seconds of CPU; plain text only needs decoding."""
    if payload.text is not None:
        fmt = resolve_format(payload.format, payload.filename, None)
        data: bytes | str = payload.text
    else:
        data = load_input(
            ctx,
            field="document",
            b64=payload.document_b64,
            url=payload.document_url,
            artifact=payload.document_artifact,
        )
        fmt = resolve_format(payload.format, payload.filename, data, hint=_source_name(payload))
    limits = Limits.of(ctx.settings)
    if fmt == "txt":
        return fmt, extract_text(data, fmt, limits)
    return fmt, ctx.parallel([partial(budgeted, cpu_s, extract_text, data, fmt, limits)])[0]


def _source_name(payload: DocumentPayload) -> str | None:
    """The name the bytes came under, whose extension may tell their format."""
    if payload.document_url is not None:
        return urlsplit(payload.document_url).path
    if payload.document_artifact is not None:
        return payload.document_artifact.partition("/")[2]
    return None


def _embed(
    ctx: JobContext, chunk_texts: list[str], sentences: list[str]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Chunk and sentence vectors and the model's name, reporting progress over both."""
    total = len(chunk_texts) + len(sentences)
    span = PROGRESS["analyse"] - PROGRESS["embed"]

    def report(done: int) -> None:
        ctx.progress(PROGRESS["embed"] + span * done / total, f"embedded {done}/{total} texts")

    ctx.progress(PROGRESS["embed"], f"embedding {total} texts", stage="embed")
    chunks = ctx.embed(chunk_texts, on_chunk=lambda done, _: report(done))
    vectors = np.asarray(chunks.vectors, dtype=np.float32)
    if not sentences:
        return vectors, np.zeros((0, vectors.shape[1]), dtype=np.float32), chunks.model
    embedded = ctx.embed(sentences, on_chunk=lambda done, _: report(len(chunk_texts) + done))
    return vectors, np.asarray(embedded.vectors, dtype=np.float32), chunks.model


def _analyse(
    ctx: JobContext, cpu_s: float, **branches: Callable[[], Any]
) -> dict[str, StageOutcome]:
    """Run the branches side by side (Ray tasks), each timed and budgeted on its own, with
    progress."""
    names = list(branches)
    finished: list[str] = []
    span = PROGRESS["done"] - PROGRESS["analyse"]

    def done(index: int, _: StageOutcome) -> None:
        finished.append(names[index])
        ctx.progress(
            PROGRESS["analyse"] + span * len(finished) / len(names), f"{names[index]} done"
        )

    calls = [partial(run_timed, branches[name], cpu_s=cpu_s) for name in names]
    return dict(zip(names, ctx.parallel(calls, on_done=done), strict=True))


def _npy(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _stopped(stages: StageLog) -> dict[str, Any]:
    """The result of a cancelled job (the job shows as cancelled; this is for the record)."""
    stages.skip_remaining()
    return {"cancelled": True, "stages": stages.as_dict()}
