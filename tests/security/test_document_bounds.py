"""Bounded work per byte for ``document.process``: documents shaped to make extraction
slow finish, or fail permanently naming the limit, in a second or two.

Measured on the code before the fix (in process, on a CI-sized machine): 20,000 nested
``<div>`` took 18-50 s (700,000 were still extracting after 250 s), 100 blocks nested 250
deep 5 s, 20,000 ``x<a`` 4 s (Python's ``html.parser`` rescans the rest of the page for
each), and a Markdown table that markdown-it pads to 65,536 cells some seconds per table,
with nothing but the job's timeout to stop them.
"""

from __future__ import annotations

import base64
import gc
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from raypipe.config import get_settings
from raypipe.context import JobContext, LocalRunner
from raypipe.embedding.models import Embeddings
from raypipe.exceptions import PermanentError
from raypipe.processors.document import DocumentPayload, process_document

#: What "fast" means here, in CPU seconds of the test's thread (where the local runner runs
#: every stage; a busy machine does not stretch them): the old code took from 4 s to
#: minutes on each of these inputs.
FAST_S = 2.0


@contextmanager
def fast() -> Iterator[None]:
    began = time.thread_time()
    yield
    spent = time.thread_time() - began
    assert spent < FAST_S, f"took {spent:.1f} s of CPU"


class NoEmbeddings(LocalRunner):
    """Runs the job's stages here, and stops it where it would embed: the stages under
    test are the ones before."""

    def embed(self, *args: Any, **kwargs: Any) -> Embeddings:
        raise Stopped


class Stopped(Exception):
    pass


def extract(document: str, filename: str, tmp_path: Path, **overrides: object) -> str:
    """The text ``document.process`` extracts from ``document``, or its PermanentError."""
    settings = get_settings(data_dir=tmp_path, **overrides)
    ctx = JobContext(
        job_id=str(uuid.uuid4()),
        job_type="document.process",
        settings=settings,
        runner=NoEmbeddings(settings),
    )
    payload = DocumentPayload(
        document_b64=base64.b64encode(document.encode()).decode(), filename=filename
    )
    with pytest.raises(Stopped):
        process_document(payload, ctx)
    return ctx.read_artifact("text.txt").decode()


@pytest.mark.parametrize("filename", ["page.html", "notes.md"])
def test_deeply_nested_html_fails_fast_naming_the_depth_limit(
    tmp_path: Path, filename: str
) -> None:
    nested = "<div>" * 20_000 + "deep" + "</div>" * 20_000
    with (
        fast(),
        pytest.raises(PermanentError, match=r"^extract: .*\(RAYPIPE_MAX_DOCUMENT_DEPTH\)$"),
    ):
        extract(nested, filename, tmp_path)


def test_nesting_within_the_limit_is_linear_not_quadratic(tmp_path: Path) -> None:
    # The cause, not only the symptom: a page within the depth limit that the old walk
    # made quadratic (each block's break walked all of the block's descendants).
    block = "<div>" * 250 + "leaf" + "</div>" * 250
    with fast():
        text = extract(block * 100, "page.html", tmp_path)
    assert text.split() == ["leaf"] * 100


def test_malformed_tags_are_read_in_linear_time(tmp_path: Path) -> None:
    with fast():
        text = extract("<p>start</p>" + "x<a" * 20_000, "page.html", tmp_path)
    assert text.startswith("start")


def test_too_many_elements_fail_fast_naming_the_node_limit(tmp_path: Path) -> None:
    with (
        fast(),
        pytest.raises(PermanentError, match=r"\(RAYPIPE_MAX_DOCUMENT_NODES\)$"),
    ):
        extract("<p>x</p>" * 2_000, "page.html", tmp_path, max_document_nodes=1_000)


def test_a_stage_past_its_cpu_budget_fails_permanently_naming_the_setting(
    tmp_path: Path,
) -> None:
    # markdown-it pads each row of a table to its header's width, up to 65,536 cells: a
    # few KB of Markdown are seconds of parsing, in one call that only a budget can stop.
    columns = 256
    table = "|" + "a|" * columns + "\n|" + "-|" * columns + "\n" + "|x\n" * columns
    gc.collect()  # see tests/unit/test_cpu_budget.py: no finalizer of other tests runs here
    with (
        fast(),
        pytest.raises(
            PermanentError,
            match=r"^extract: used more than 0\.2 s of CPU time "
            r"\(RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S\)$",
        ),
    ):
        extract("\n\n".join([table] * 4), "table.md", tmp_path, max_document_stage_cpu_s=0.2)
