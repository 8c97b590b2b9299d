"""Document processing's pure parts: extraction, sentences, chunks, keywords, summaries,
stage bookkeeping and the payload's validation. No model and no Ray."""

from __future__ import annotations

import gc
import io
import itertools
import random
import time
from dataclasses import replace

import numpy as np
import pytest
from fpdf import FPDF
from pydantic import ValidationError

from raypipe.config import Settings
from raypipe.documents.chunking import Chunk, chunk_text, unshared_texts
from raypipe.documents.extract import Limits, extract_text, resolve_format
from raypipe.documents.keywords import terms, top_keywords
from raypipe.documents.sentences import split_sentences
from raypipe.documents.stages import StageLog, in_stage, run_timed
from raypipe.documents.summary import candidate_sentences, centroid_scores, summarize
from raypipe.exceptions import PermanentError, RetryableError
from raypipe.processors.document import DocumentPayload

JOB_ID = "0b6a4f0e-3c1d-4a52-9a43-6f7d2f9e8b11"


#: The default bound on a document's text.
LIMIT = Limits.of(Settings())


def make_pdf(*paragraphs: str, **encryption: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    if encryption:
        pdf.set_encryption(**encryption)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(4)
    return bytes(pdf.output())


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "filename", "data", "hint", "expected"),
    [
        ("md", "a.pdf", b"x", None, "md"),
        (None, "Report.PDF", b"x", None, "pdf"),
        (None, "page.htm", b"x", None, "html"),
        (None, "notes.markdown", b"x", None, "md"),
        (None, None, None, None, "txt"),
        (None, None, b"%PDF-1.7\n...", None, "pdf"),
        (None, None, b"\xef\xbb\xbf <!DOCTYPE html><p>x", None, "html"),
        (None, None, b"just words", None, "txt"),
        (None, None, b"just words", "/docs/readme.md", "md"),
        (None, None, b"<html><p>x</p></html>", "/index.php", "html"),
        (None, "README", b"# title", "/x.md", "md"),
    ],
)
def test_resolve_format(
    explicit: str | None, filename: str | None, data: bytes | None, hint: str | None, expected: str
) -> None:
    assert resolve_format(explicit, filename, data, hint=hint) == expected


def test_unsupported_extension_is_named() -> None:
    with pytest.raises(PermanentError, match=r"unsupported format '\.docx' of 'memo\.docx'"):
        resolve_format(None, "memo.docx", b"PK\x03\x04")


# -- extraction ---------------------------------------------------------------------------


def test_html_drops_scripts_styles_and_head() -> None:
    page = b"""<!DOCTYPE html><html><head><title>Head title</title>
    <style>p { color: red }</style><script>var leak = "SCRIPT_TEXT";</script></head>
    <body><h1>Leaves</h1><p>Plants   make
    <b>sugar</b> from light.<br>A new line.</p><!-- a comment -->
    <noscript>enable scripts</noscript><table><tr><td>cell1</td><td>cell2</td></tr></table>
    <p>Fig: <img src="a.png" alt="a leaf"></p></body></html>"""
    text = extract_text(page, "html", LIMIT)
    assert text == (
        "Leaves\n\nPlants make sugar from light.\nA new line.\n\ncell1 cell2\n\nFig: a leaf"
    )


def test_html_in_another_declared_encoding() -> None:
    page = '<meta charset="latin-1"><p>Café crème</p>'.encode("latin-1")
    assert extract_text(page, "html", LIMIT) == "Café crème"


def test_markdown_markup_is_stripped() -> None:
    source = (
        "# Title\n\nSome *emphasis*, **strong** and a [link](https://example.com/x).\n\n"
        "- first item\n- second item\n\n```python\nprint('code')\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n![a diagram](d.png)\n"
    )
    text = extract_text(source.encode(), "md", LIMIT)
    assert text == (
        "Title\n\nSome emphasis, strong and a link.\n\nfirst item\n\nsecond item\n\n"
        "print('code')\n\na b\n\n1 2\n\na diagram"
    )


def test_txt_whitespace_is_tidied_and_bom_dropped() -> None:
    raw = "\ufeffOne  line\t here \r\nnext\r\n\r\n\r\n\r\nlast   ".encode()
    assert extract_text(raw, "txt", LIMIT) == "One line here\nnext\n\nlast"


def test_invalid_utf8_names_the_byte() -> None:
    with pytest.raises(PermanentError, match=r"not valid UTF-8 \(byte 0xff at offset 6\)"):
        extract_text(b"hello \xff world", "txt", LIMIT)


@pytest.mark.parametrize(
    ("data", "fmt", "problem"),
    [
        (b"PK\x03\x04rest-of-a-docx", "txt", "a ZIP archive"),
        (b"%PDF-1.7 binary", "html", "a PDF, not html"),
        (b"\x89PNG\r\n\x1a\n", "md", "a PNG image"),
        (b"text\x00with\x00nuls", "txt", "binary data"),
    ],
)
def test_bytes_of_another_format_are_refused(data: bytes, fmt: str, problem: str) -> None:
    with pytest.raises(PermanentError, match=problem):
        extract_text(data, fmt, LIMIT)


@pytest.mark.parametrize("fmt", ["txt", "md", "html"])
def test_empty_document(fmt: str) -> None:
    empty = {"txt": b" \n\t\n", "md": b"<!-- nothing -->\n", "html": b"<script>x()</script>"}
    with pytest.raises(PermanentError, match="the document has no text"):
        extract_text(empty[fmt], fmt, LIMIT)


def test_html_tags_left_open_are_closed_where_html_closes_them() -> None:
    # An unclosed <head> ends at <body>, list items and paragraphs at their next sibling.
    page = b"<html><head><title>T</title><body><p>one<p>two<ul><li>a<li>b</ul>"
    assert extract_text(page, "html", LIMIT) == "one\n\ntwo\n\na\n\nb"


def test_html_keeps_pre_whitespace_and_reads_text_given_as_a_string() -> None:
    page = "<p>caf\u00e9\u00a0 au   lait</p><pre>x = 1\n    y = 2</pre><svg><text>no</text></svg>"
    assert extract_text(page, "html", LIMIT) == "caf\u00e9 au lait\n\nx = 1\ny = 2"


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_html_nesting_past_the_depth_bound_is_refused_naming_the_setting(fmt: str) -> None:
    nested = "<div>" * 30 + "deep" + "</div>" * 30
    with pytest.raises(PermanentError, match=r"more than 20 deep \(RAYPIPE_MAX_DOCUMENT_DEPTH\)"):
        extract_text(nested.encode(), fmt, replace(LIMIT, depth=20))
    assert extract_text(nested.encode(), fmt, replace(LIMIT, depth=40)) == "deep"


@pytest.mark.parametrize(
    "nested",
    [
        "> " * 20 + "deep\n",  # blockquotes
        "".join("  " * i + "- x\n" for i in range(12)) + "  " * 12 + "- deep\n",  # lists
    ],
    ids=["quotes", "lists"],
)
def test_markdown_nesting_past_its_bound_fails_rather_than_losing_text(nested: str) -> None:
    # markdown-it drops what nests past its bound: this text came out empty, silently.
    with pytest.raises(PermanentError, match=r"more than 20 deep \(the Markdown nesting limit\)"):
        extract_text(nested.encode(), "md", LIMIT)
    assert extract_text(("> " * 19 + "deep\n").encode(), "md", LIMIT) == "deep"


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_html_past_the_element_bound_is_refused_naming_the_setting(fmt: str) -> None:
    page = "<p>x</p>" * 100
    with pytest.raises(
        PermanentError, match=r"more than 50 elements \(RAYPIPE_MAX_DOCUMENT_NODES\)"
    ):
        extract_text(page.encode(), fmt, replace(LIMIT, nodes=50))


def test_pdf_text_is_extracted() -> None:
    data = make_pdf("Chlorophyll absorbs sunlight.", "The Calvin cycle fixes carbon dioxide.")
    text = extract_text(data, "pdf", LIMIT)
    assert "Chlorophyll absorbs sunlight." in text
    assert "The Calvin cycle fixes carbon dioxide." in text


def test_pdf_encrypted_with_empty_user_password_opens() -> None:
    data = make_pdf("Readable without a password.", owner_password="owner")
    assert extract_text(data, "pdf", LIMIT) == "Readable without a password."


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (make_pdf("secret", owner_password="o", user_password="u"), "encrypted"),
        (make_pdf("Some text here. " * 40)[:700], "cannot be read"),
        (b"%PDF-1.4\n%%EOF", "cannot be read"),
        (b"plain words, no PDF", "not a PDF"),
        (make_pdf(), "no extractable text"),
    ],
    ids=["encrypted", "truncated", "no-xref", "not-pdf", "blank-page"],
)
def test_bad_pdfs(data: bytes, problem: str) -> None:
    with pytest.raises(PermanentError, match=problem):
        extract_text(data, "pdf", LIMIT)


# -- sentences ----------------------------------------------------------------------------


def test_sentences() -> None:
    text = (
        "Heading\n\nDr. Smith met J. R. Tolkien in the U.S. in 1950. He said “hello!” "
        "Then left... and e.g. this is one sentence. Really? Yes.\n"
        "A wrapped\nline ends here"
    )
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == [
        "Heading",
        "Dr. Smith met J. R. Tolkien in the U.S. in 1950.",
        "He said “hello!”",
        "Then left... and e.g. this is one sentence.",
        "Really?",
        "Yes.",
        "A wrapped line ends here",
    ]
    for sentence in sentences:
        assert " ".join(text[sentence.start : sentence.end].split()) == sentence.text


def test_no_sentences_in_blank_text() -> None:
    assert split_sentences(" \n\n ") == []


# -- chunks -------------------------------------------------------------------------------


def random_text(seed: int, paragraphs: int = 30) -> str:
    rng = random.Random(seed)
    words = ["leaf", "light", "water", "sugar", "carbon", "oxygen", "cell", "photosynthesis"]
    out = []
    for _ in range(paragraphs):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(2, 30))).capitalize() + "."
            for _ in range(rng.randint(1, 6))
        ]
        out.append(" ".join(sentences))
    out.append("x" * 700)  # a run with no break at all
    return "\n\n".join(out)


def assert_valid_chunks(text: str, chunks: list[Chunk], size: int, overlap: int) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start
        assert before.end - after.start <= overlap  # shared characters
        assert not text[before.end : after.start].strip()  # and nothing skipped
    assert not text[: chunks[0].start].strip()
    assert not text[chunks[-1].end :].strip()


@pytest.mark.parametrize(
    ("size", "overlap"), [(100, 0), (100, 50), (100, 99), (300, 100), (800, 100), (20_000, 0)]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunks_respect_size_and_overlap(seed: int, size: int, overlap: int) -> None:
    text = random_text(seed)
    chunks = chunk_text(text, size, overlap)
    assert_valid_chunks(text, chunks, size, overlap)
    assert chunks == chunk_text(text, size, overlap)  # deterministic


def test_chunks_end_at_sentences_and_start_at_words() -> None:
    sentences = [f"Sentence {n} talks about leaves and light." for n in range(200)]
    text = "\n\n".join(" ".join(sentences[i : i + 7]) for i in range(0, 200, 7))
    chunks = chunk_text(text, 400, 80)
    assert_valid_chunks(text, chunks, 400, 80)
    for chunk in chunks:
        assert chunk.text.endswith("light."), chunk.text
        assert chunk.text.startswith("Sentence "), chunk.text


def test_chunks_prefer_paragraph_breaks() -> None:
    text = ("Alpha beta gamma. " * 10).strip() + "\n\n" + ("Delta epsilon. " * 10).strip()
    first = chunk_text(text, 300, 20)[0]
    assert first.text == ("Alpha beta gamma. " * 10).strip()


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("  A short text.  ", 100, 10) == [Chunk(0, 2, 15, "A short text.")]
    assert chunk_text("   ", 100, 10) == []


def test_unshared_texts_partition_the_document() -> None:
    text = random_text(4)
    chunks = chunk_text(text, 250, 60)
    pieces = unshared_texts(text, chunks)
    assert "".join(pieces).split() == text.split()


# -- keywords -----------------------------------------------------------------------------


def test_terms_make_phrases_of_neighbours_only() -> None:
    assert terms("The plant's leaves absorb light, and 42 cells die.") == [
        "plant",
        "leaves",
        "plant leaves",
        "absorb",
        "leaves absorb",
        "light",
        "absorb light",
        "cells",
        "die",
        "cells die",
    ]


def test_keywords_rank_dominant_terms_and_fold_phrases() -> None:
    chunks = [
        "Carbon dioxide enters the leaf. Carbon dioxide is fixed by the leaf.",
        "The light reactions need light. Light reactions make ATP in the leaf.",
        "Light falls on the leaf. Carbon dioxide and light feed the leaf.",
    ]
    keywords = top_keywords(chunks, 4)
    assert set(keywords[:2]) == {"leaf", "light"}
    assert "carbon dioxide" in keywords
    assert "carbon" not in keywords and "dioxide" not in keywords  # the phrase covers them
    assert "light reactions" in keywords  # "light" also stands on its own


def test_keywords_of_text_without_terms() -> None:
    assert top_keywords(["the and of 12 34", "!!"], 5) == []
    assert top_keywords(["photosynthesis"], 5) == ["photosynthesis"]


# -- summary ------------------------------------------------------------------------------


def test_candidates_are_distinct_long_enough_sentences() -> None:
    sentences = ["Title", "One two three four.", "Short one.", "One two three four."]
    assert candidate_sentences(sentences) == ["One two three four."]
    assert candidate_sentences(["Title", "Short."]) == ["Title", "Short."]


def test_summary_picks_closest_sentences_in_document_order() -> None:
    sentences = ["s0", "s1", "s2", "s3"]
    vectors = np.array([[0.0, 1.0], [1.0, 0.1], [0.2, 1.0], [1.0, 0.0]], dtype=np.float32)
    centroid = np.array([2.0, 0.0])
    scores = centroid_scores(vectors, centroid)
    assert scores[3] == pytest.approx(1.0)
    assert summarize(sentences, vectors, centroid, 2) == "s1 s3"
    assert summarize(sentences, vectors, centroid, 10) == "s0 s1 s2 s3"
    assert summarize([], np.zeros((0, 2)), centroid, 3) == ""


# -- stages -------------------------------------------------------------------------------


def test_in_stage_prefixes_raypipe_errors_only() -> None:
    permanent = in_stage("extract", PermanentError("bad"))
    assert isinstance(permanent, PermanentError) and permanent.message == "extract: bad"
    assert in_stage("extract", permanent) is permanent  # no double prefix
    retryable = in_stage("embed", RetryableError("busy", delay_s=3.0))
    assert isinstance(retryable, RetryableError)
    assert (retryable.message, retryable.delay_s) == ("embed: busy", 3.0)
    other = ValueError("odd")
    assert in_stage("chunk", other) is other


def test_stage_log_records_and_names_failures() -> None:
    log = StageLog(["a", "b", "c"])
    with log.run("a"):
        pass
    with pytest.raises(PermanentError, match=r"^b: broken$"), log.run("b"):
        raise PermanentError("broken")
    with pytest.raises(KeyError), log.run("c"):
        raise KeyError("unexpected")
    stages = log.as_dict()
    assert [stages[name]["status"] for name in "abc"] == ["completed", "failed", "failed"]
    assert stages["a"]["error"] is None and stages["a"]["duration_s"] >= 0
    assert stages["a"]["started_at"].endswith("Z")
    assert stages["b"]["error"] == "PermanentError: broken"


def fails(message: str) -> None:
    raise PermanentError(message)


def test_collect_records_every_branch_then_raises_the_first_failure() -> None:
    log = StageLog(["x", "y", "z"])
    outcomes = {"x": run_timed(sorted, [2, 1]), "y": run_timed(fails, "no luck")}
    with pytest.raises(PermanentError, match=r"^y: no luck$"):
        log.collect(outcomes)
    log.skip_remaining()
    stages = log.as_dict()
    assert [stages[name]["status"] for name in "xyz"] == ["completed", "failed", "skipped"]
    assert StageLog(["x"]).collect({"x": outcomes["x"]}) == {"x": [1, 2]}


def spin() -> None:
    while True:
        pass


def test_a_stage_past_its_cpu_budget_fails_permanently_naming_the_setting() -> None:
    gc.collect()  # see tests/unit/test_cpu_budget.py
    log = StageLog(["busy", "idle"], cpu_s=0.2)
    with (
        pytest.raises(PermanentError, match=r"^busy: used more than 0\.2 s of CPU time"),
        log.run("busy"),
    ):
        spin()
    with log.run("idle"):
        time.sleep(0.4)  # waiting costs no CPU
    assert log.as_dict()["busy"]["error"].endswith("(RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S)")
    outcome = run_timed(spin, cpu_s=0.2)  # how a branch in a Ray task keeps its budget
    assert isinstance(outcome.error, PermanentError)
    assert "RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S" in outcome.error.message


# -- payload ------------------------------------------------------------------------------


def test_payload_defaults() -> None:
    payload = DocumentPayload(text="Hello.")
    assert (payload.chunk_size, payload.chunk_overlap) == (800, 100)
    assert (payload.keywords, payload.summary_sentences) == (10, 3)
    DocumentPayload(document_artifact=f"{JOB_ID}/report.pdf")
    DocumentPayload(document_url="https://example.com/a.pdf", filename="a.pdf")


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"text": "a", "document_b64": "YQ=="}, r"exactly one of .* \(got text, document_b64\)"),
        ({}, r"exactly one of .* \(got none\)"),
        ({"text": "a", "chunk_size": 200, "chunk_overlap": 200}, "less than chunk_size"),
        ({"text": "a", "keywords": 0}, "keywords"),
        ({"text": "a", "summary_sentences": 51}, "summary_sentences"),
        ({"text": "a", "chunk_size": 99}, "chunk_size"),
        ({"text": "a", "chunk_overlap": -1}, "chunk_overlap"),
        ({"text": "   "}, "must not be blank"),
        ({"text": ""}, "text"),
        ({"document_url": "ftp://example.com/a.pdf"}, "http:// or https://"),
        ({"document_url": "https://"}, "http:// or https://"),
        ({"document_url": "http://xn--/a.pdf"}, "IDNA"),
        ({"document_artifact": "../etc/passwd"}, "document_artifact"),
        ({"text": "a", "format": "docx"}, "format"),
        ({"text": "a", "format": "pdf"}, "needs the file's bytes"),
        ({"text": "a", "colour": "red"}, "colour"),
    ],
)
def test_payload_validation(payload: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        DocumentPayload.model_validate(payload)


def _repeated_pdf(text: str, copies: int) -> bytes:
    """A PDF of ``copies`` pages that all draw one page's content: a small file."""
    from pypdf import PdfReader, PdfWriter

    page = PdfReader(io.BytesIO(make_pdf(text))).pages[0]
    writer = PdfWriter()
    for _ in range(copies):
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_a_pdf_expanding_past_the_text_bound_is_refused_naming_the_setting() -> None:
    # 200 pages that all draw one page's content: small file, 200 times its text.
    bomb = _repeated_pdf("Repeated text on every page. " * 40, 200)
    one_page = len(extract_text(make_pdf("Repeated text on every page. " * 40), "pdf", LIMIT))
    with pytest.raises(PermanentError, match="longer than 100,000 characters"):
        extract_text(bomb, "pdf", replace(LIMIT, chars=100_000))
    assert one_page * 200 > 100_000


def test_text_past_the_bound_is_refused_for_every_format() -> None:
    with pytest.raises(PermanentError, match="RAYPIPE_MAX_DOCUMENT_CHARS"):
        extract_text("word " * 100, "txt", replace(LIMIT, chars=50, pages=1))
    assert (
        extract_text("word " * 10, "txt", replace(LIMIT, chars=50, pages=1))
        == ("word " * 10).strip()
    )


def test_a_pdf_past_the_page_bound_is_refused_before_a_page_is_read() -> None:
    thirty = _repeated_pdf("One line.", 30)
    with pytest.raises(
        PermanentError, match=r"30 pages, more than 20 \(RAYPIPE_MAX_DOCUMENT_PAGES\)"
    ):
        extract_text(thirty, "pdf", replace(LIMIT, pages=20))
    assert "One line." in extract_text(thirty, "pdf", replace(LIMIT, pages=30))
