"""Input files of jobs (base64, artifacts, URLs over real local HTTP) and artifact storage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe.artifacts import ArtifactInfo, ArtifactStore
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.exceptions import NotFound, PermanentError, RetryableError
from raypipe.processors.inputs import load_input
from tests.helpers.local_http import QuietHandler, serving

BODY = b"x" * 5000


class Handler(QuietHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/busy":
            self.send_response(503)
            self.send_header("Retry-After", "9")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        if self.path != "/chunked":
            self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(BODY)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(Handler) as url:
        yield url


#: The test server listens on loopback, which the outbound guard refuses by default.
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    settings: Settings = get_settings(
        data_dir=tmp_path,
        max_input_bytes=10_000,
        fetch_timeout_s=0.5,
        fetch_allow_networks=LOOPBACK,
    )
    return JobContext.local("t", settings)


def test_a_url_is_fetched(ctx: JobContext, server: str) -> None:
    assert load_input(ctx, field="image", url=f"{server}/ok") == BODY


def test_a_slow_url_is_retried(ctx: JobContext, server: str) -> None:
    with pytest.raises(RetryableError, match="timed out"):
        load_input(ctx, field="image", url=f"{server}/slow")


def test_a_busy_service_is_retried_after_its_retry_after(ctx: JobContext, server: str) -> None:
    with pytest.raises(RetryableError, match="HTTP 503") as err:
        load_input(ctx, field="image", url=f"{server}/busy")
    assert err.value.delay_s == 9


@pytest.mark.parametrize(
    ("path", "limit", "problem"),
    [("/missing", 10_000, "HTTP 404"), ("/ok", 100, "too large"), ("/chunked", 100, "too large")],
)
def test_permanent_url_problems(
    tmp_path: Path, server: str, path: str, limit: int, problem: str
) -> None:
    settings = get_settings(data_dir=tmp_path, max_input_bytes=limit, fetch_allow_networks=LOOPBACK)
    ctx = JobContext.local("t", settings)
    with pytest.raises(PermanentError, match=problem):
        load_input(ctx, field="image", url=f"{server}{path}")


def test_unreachable_and_unsupported_urls_are_permanent(ctx: JobContext, server: str) -> None:
    with pytest.raises(PermanentError, match="unreachable"):
        load_input(ctx, field="image", url="http://127.0.0.1:9/nothing-listens")
    with pytest.raises(PermanentError, match=r"payload\.image_url: must be an http:// or https"):
        load_input(ctx, field="image", url="ftp://example.org/a.png")


def test_base64_and_artifact_sources(ctx: JobContext) -> None:
    assert load_input(ctx, field="document", b64="aGVsbG8=") == b"hello"
    with pytest.raises(PermanentError, match=r"payload\.document_b64: not valid base64"):
        load_input(ctx, field="document", b64="not base64!")
    ctx.write_artifact("in.txt", "data")
    assert load_input(ctx, field="document", artifact=f"{ctx.job_id}/in.txt") == b"data"
    with pytest.raises(PermanentError, match="give one of"):
        load_input(ctx, field="document")


def test_artifacts_work_on_any_fsspec_filesystem() -> None:
    store = ArtifactStore("memory://raypipe-test")
    info = store.write("acme", "0" * 36, "a.npy", b"abc", 1)
    assert (info.size, info.content_type) == (3, "application/x-npy")
    assert store.read("acme", "0" * 36, "a.npy") == b"abc"
    with pytest.raises(NotFound):
        store.read("other", "0" * 36, "a.npy")
    store.delete("acme", "0" * 36)
    assert not store.exists("acme", "0" * 36, "a.npy")
    store.delete("acme", "0" * 36)  # nothing left: still fine


def test_a_stale_attempt_cannot_replace_the_files_of_a_newer_one(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    job = "1" * 36
    newer = store.write("acme", job, "mesh.glb", b"attempt 2", 2)
    # Attempt 1 was rescued but its worker still ran, and writes after attempt 2 did.
    store.write("acme", job, "mesh.glb", b"attempt 1, late", 1)
    assert store.read("acme", job, "mesh.glb", newer.attempt) == b"attempt 2"  # the row's
    assert store.read("acme", job, "mesh.glb") == b"attempt 2"  # a reference's: the newest
    assert ArtifactInfo.from_dict(newer.to_dict()) == newer
    # A file from before attempt folders (0.5.0) is still read where it lies.
    (tmp_path / "acme" / ("2" * 36)).mkdir(parents=True)
    (tmp_path / "acme" / ("2" * 36) / "old.txt").write_bytes(b"flat")
    assert store.read("acme", "2" * 36, "old.txt") == b"flat"
    assert (
        ArtifactInfo.from_dict({"name": "old.txt", "size": 4, "content_type": "x"}).attempt is None
    )
