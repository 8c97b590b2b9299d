"""The document.process job end to end in one process: real PDFs, HTML, Markdown and text,
the real embedding model, artifacts read back and checked against the model's own output."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.documents.chunking import Chunk
from raypipe.documents.sentences import split_sentences
from raypipe.documents.summary import candidate_sentences
from raypipe.embedding.models import EmbeddingModel, load_cached
from raypipe.exceptions import PermanentError
from raypipe.processors.document import STAGES, DocumentPayload, process_document
from tests.helpers.contexts import reporting
from tests.helpers.local_http import serving
from tests.unit.test_documents import assert_valid_chunks, make_pdf

PARAGRAPHS = (
    "Photosynthesis is the process by which green plants turn sunlight into chemical energy. "
    "Photosynthesis takes place in the chloroplasts, where chlorophyll absorbs sunlight.",
    "Chlorophyll absorbs mostly red and blue sunlight and reflects green, which is why leaves "
    "look green. The sunlight that chlorophyll captures drives the first steps of photosynthesis.",
    "In these steps, sunlight splits water molecules and releases oxygen. Chlorophyll passes "
    "the energy on to ATP and NADPH, which later power the making of sugar.",
    "The Calvin cycle of photosynthesis fixes carbon dioxide from the air into sugar. "
    "Photosynthesis therefore links sunlight, water and carbon dioxide to the food of plants.",
    "My uncle repaired his old bicycle last weekend. He painted the frame bright red.",
    "Without photosynthesis there would be little oxygen in the air and no food for animals. "
    "Chlorophyll and sunlight together make almost all life on Earth possible.",
)
TEXT = "\n\n".join(PARAGRAPHS)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingModel:
    """The embedding model, loaded once for the module (processors reuse the same one)."""
    return load_cached(get_settings(data_dir=tmp_path_factory.mktemp("model")).embeddings)


@pytest.fixture
def settings(tmp_path: Path, model: EmbeddingModel) -> Settings:
    return get_settings(data_dir=tmp_path)


@pytest.fixture
def ctx(settings: Settings) -> JobContext:
    return JobContext.local("document.process", settings)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(ctx: JobContext, **payload: Any) -> dict[str, Any]:
    return process_document(DocumentPayload(**payload), ctx)


def read_chunks(ctx: JobContext) -> list[Chunk]:
    lines = ctx.read_artifact("chunks.jsonl").decode().splitlines()
    return [Chunk(**json.loads(line)) for line in lines]


def read_vectors(ctx: JobContext) -> np.ndarray:
    return np.load(io.BytesIO(ctx.read_artifact("chunk_embeddings.npy")), allow_pickle=False)


def assert_completed_stages(result: dict[str, Any]) -> None:
    assert list(result["stages"]) == list(STAGES)
    for record in result["stages"].values():
        assert record["status"] == "completed"
        assert record["error"] is None
        assert record["duration_s"] >= 0
        assert record["started_at"].endswith("Z")


def test_registered() -> None:
    spec = registry.get("document.process")
    assert spec.payload_model is DocumentPayload
    assert (spec.queue, spec.num_cpus, spec.uses) == ("documents", 1, ("embeddings",))


def test_pdf_document(ctx: JobContext, model: EmbeddingModel) -> None:
    result = run(
        ctx,
        document_b64=b64(make_pdf(*PARAGRAPHS)),
        filename="leaf.pdf",
        chunk_size=300,
        chunk_overlap=60,
        keywords=8,
        summary_sentences=3,
    )
    text = ctx.read_artifact("text.txt").decode()
    assert "chlorophyll absorbs sunlight" in " ".join(text.split())
    assert result["format"] == "pdf"
    assert result["model"] == model.name
    assert (result["chars"], result["words"]) == (len(text), len(text.split()))
    assert result["sentences"] == len(split_sentences(text)) == 12
    assert set(result["keywords"][:3]) == {"photosynthesis", "chlorophyll", "sunlight"}
    assert len(result["keywords"]) == 8
    assert_completed_stages(result)
    assert result["artifacts"] == ["text.txt", "chunks.jsonl", "chunk_embeddings.npy"]
    assert set(ctx.artifacts) == set(result["artifacts"])

    chunks = read_chunks(ctx)
    assert len(chunks) == result["chunks"] > 3
    assert_valid_chunks(text, chunks, 300, 60)

    vectors = read_vectors(ctx)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(chunks), 384)
    expected = model.model.encode([chunk.text for chunk in chunks], normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    # The summary: three sentences of the document, in its order, nearest the centroid.
    candidates = candidate_sentences(sentence.text for sentence in split_sentences(text))
    chosen = [sentence for sentence in candidates if sentence in result["summary"]]
    assert len(chosen) == 3
    assert " ".join(chosen) == result["summary"]
    sentence_vectors = model.model.encode(candidates, normalize_embeddings=True)
    centroid = vectors.mean(axis=0)
    scores = sentence_vectors @ centroid / np.linalg.norm(centroid)
    picked = np.array([sentence in chosen for sentence in candidates])
    assert scores[picked].min() > scores[~picked].max()
    assert "bicycle" not in result["summary"]


def test_html_page_without_scripts(ctx: JobContext) -> None:
    page = f"""<!DOCTYPE html><html><head><title>Leaves</title>
    <script>window.tracker = "SCRIPT_SECRET";</script><style>.x {{ color: red }}</style></head>
    <body><nav><a href="/">Home</a></nav>
    {"".join(f"<p>{paragraph}</p>" for paragraph in PARAGRAPHS)}
    <script>console.log("SCRIPT_SECRET")</script></body></html>"""
    result = run(ctx, document_b64=b64(page.encode()), filename="leaves.html")
    text = ctx.read_artifact("text.txt").decode()
    assert "SCRIPT_SECRET" not in text and "color" not in text
    assert text.startswith("Home\n\n" + PARAGRAPHS[0])
    assert result["format"] == "html"
    assert set(result["keywords"][:3]) == {"photosynthesis", "chlorophyll", "sunlight"}
    assert result["chunks"] == 2  # 800-character chunks
    assert_completed_stages(result)


def test_markdown_with_headings_and_links(ctx: JobContext) -> None:
    source = (
        "# Photosynthesis\n\n## How it works\n\n"
        + PARAGRAPHS[0].replace("chlorophyll", "[chlorophyll](https://example.org/chl)")
        + "\n\n"
        + "\n\n".join(f"* **{paragraph}**" for paragraph in PARAGRAPHS[1:])
    )
    result = run(ctx, text=source, format="md", summary_sentences=2)
    text = ctx.read_artifact("text.txt").decode()
    assert text.startswith("Photosynthesis\n\nHow it works\n\nPhotosynthesis is the process")
    for markup in ("#", "**", "](", "https://", "* "):
        assert markup not in text
    assert result["format"] == "md"
    assert len([s for s in candidate_sentences([PARAGRAPHS[0]]) if s in result["summary"]]) <= 2
    assert result["keywords"][0] in {"photosynthesis", "chlorophyll", "sunlight"}


def test_plain_text_reports_progress_through_every_stage(settings: Settings) -> None:
    ctx, states = reporting("document.process", settings)
    result = process_document(DocumentPayload(text=TEXT, chunk_size=200, chunk_overlap=0), ctx)
    assert result["format"] == "txt"
    assert ctx.read_artifact("text.txt").decode() == TEXT
    assert result["sentences"] == 12
    percents = [state.progress for state in states]
    assert percents == sorted(percents)
    assert percents[0] == 0 and percents[-1] == 100
    seen = list(dict.fromkeys(state.stage for state in states))
    assert seen == ["extract", "chunk", "embed", "keywords+summary"]


def test_cancelled_between_stages_stops_early(settings: Settings) -> None:
    ctx = JobContext(
        job_id="00000000-0000-4000-8000-000000000002",
        job_type="document.process",
        settings=settings,
        cancelled=lambda: True,
    )
    result = process_document(DocumentPayload(text=TEXT), ctx)
    assert result["cancelled"] is True
    statuses = {name: record["status"] for name, record in result["stages"].items()}
    assert statuses == {
        "extract": "completed",
        "chunk": "skipped",
        "embed": "skipped",
        "keywords": "skipped",
        "summary": "skipped",
    }
    assert set(ctx.artifacts) == {"text.txt"}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    with serving(partial(QuietHandler, directory=str(folder))) as url:
        yield url, folder


def test_url_source(settings: Settings, served: tuple[str, Path]) -> None:
    # The test server listens on loopback, which the outbound guard refuses by default.
    allowed = settings.model_copy(update={"fetch_allow_networks": ["127.0.0.1/32"]})
    ctx = JobContext.local("document.process", allowed)
    base, folder = served
    (folder / "leaf.htm").write_text(f"<h1>Leaves</h1><p>{TEXT}</p>", encoding="utf-8")
    result = run(ctx, document_url=f"{base}/leaf.htm", keywords=3)
    assert result["format"] == "html"
    assert ctx.read_artifact("text.txt").decode().startswith("Leaves\n\nPhotosynthesis is")
    assert_completed_stages(result)

    with pytest.raises(
        PermanentError,
        match=r"^extract: payload\.document_url: http://127\.0\.0\.1:\d+/gone\.pdf an",
    ):
        run(ctx, document_url=f"{base}/gone.pdf")


def test_artifact_source(settings: Settings) -> None:
    first = JobContext.local("document.process", settings)
    first.write_artifact("notes.md", "# Notes\n\n" + TEXT)
    second = JobContext.local("document.process", settings)
    result = run(second, document_artifact=f"{first.job_id}/notes.md", summary_sentences=1)
    assert result["format"] == "md"
    assert second.read_artifact("text.txt").decode().startswith("Notes\n\nPhotosynthesis")
    assert result["summary"] in candidate_sentences(s.text for s in split_sentences(TEXT))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"document_b64": b64(b"PK\x03\x04..."), "filename": "memo.docx"}, "unsupported format"),
        ({"document_b64": b64(b"\n  \n"), "filename": "a.txt"}, "the document has no text"),
        ({"document_b64": b64(b"caf\xe9 au lait"), "filename": "a.txt"}, "not valid UTF-8"),
        ({"document_b64": b64(b"%PDF-1.5\n" + bytes(300)), "filename": "a.pdf"}, "cannot be read"),
        ({"document_b64": b64(make_pdf()), "filename": "a.pdf"}, "no extractable text"),
        (
            {"document_b64": b64(make_pdf("x", owner_password="o", user_password="u"))},
            "the PDF is encrypted",
        ),
        ({"document_b64": b64(b"just text"), "filename": "a.pdf"}, "not a PDF"),
        ({"document_b64": b64(make_pdf("Words.")), "filename": "a.md"}, "is a PDF, not md"),
        ({"document_b64": "not base64!"}, "payload.document_b64: not valid base64"),
        (
            {"document_artifact": "00000000-0000-4000-8000-00000000dead/a.pdf"},
            "no artifact 'a.pdf'",
        ),
    ],
    ids=[
        "docx",
        "empty",
        "latin-1",
        "corrupt-pdf",
        "blank-pdf",
        "encrypted-pdf",
        "text-as-pdf",
        "pdf-as-md",
        "bad-base64",
        "missing-artifact",
    ],
)
def test_bad_documents_fail_permanently_in_extract(
    ctx: JobContext, payload: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PermanentError, match=f"^extract: .*{problem}"):
        run(ctx, **payload)
    assert not ctx.artifacts
