"""What a running attempt sees of raypipe: progress, cancellation, artifacts and fan-out."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from raypipe.artifacts import ArtifactInfo, ArtifactStore, split_ref
from raypipe.config import Settings
from raypipe.config_groups import EmbeddingSettings
from raypipe.exceptions import NotFound, PermanentError
from raypipe.job_logs import JOB_LOGGER, job_fields
from raypipe.jobs import ProgressState

if TYPE_CHECKING:
    from raypipe.embedding.models import Embeddings

T = TypeVar("T")
Report = Callable[[ProgressState], None]


class Runner(Protocol):
    """Where a processor's sub-work runs: Ray tasks and model actors in the cluster, or
    this process (:class:`LocalRunner`, for tests and single-process references)."""

    def parallel(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        num_cpus: float,
        memory: int | None,
        on_done: Callable[[int, T], None] | None,
    ) -> list[T]: ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None,
        normalize: bool,
        on_chunk: Callable[[int, int], None] | None,
    ) -> Embeddings: ...


class JobContext:
    """Handed to a processor with its payload.

    ``progress()`` never waits on anything: it stores the latest value, and the
    process ships the newest state of each job at a fixed interval, so calling it in
    a tight loop costs next to nothing. Artifacts written here are listed on the job
    once the attempt completes. ``logger`` is the job's logger: in a worker, its lines
    are kept with the attempt (``GET /v1/jobs/{id}/logs``); each record carries the
    job's :func:`~raypipe.job_logs.job_fields`.
    """

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        settings: Settings,
        attempt: int = 1,
        max_attempts: int = 1,
        tenant: str = "default",
        queue: str = "default",
        report: Report | None = None,
        cancelled: Callable[[], bool] | None = None,
        runner: Runner | None = None,
    ):
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.tenant = tenant
        self.settings = settings
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"{JOB_LOGGER}.{job_type}"),
            job_fields(job_id, attempt, job_type, queue, tenant),
        )
        self.artifacts: dict[str, ArtifactInfo] = {}
        self._report = report
        self._cancelled = cancelled
        self._runner = runner or LocalRunner(settings.embeddings)
        self._store: ArtifactStore | None = None
        self._stage: str | None = None

    @classmethod
    def local(cls, job_type: str, settings: Settings, tenant: str = "default") -> JobContext:
        """A context that runs everything in this process: tests, notebooks, references."""
        return cls(job_id=str(uuid.uuid4()), job_type=job_type, settings=settings, tenant=tenant)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def progress(
        self, percent: float, message: str | None = None, stage: str | None = None
    ) -> None:
        """Report progress (0–100, clamped), an optional short message and stage."""
        if stage is not None:
            self._stage = stage
        if self._report is None:
            return
        value = 0.0 if math.isnan(percent) else min(100.0, max(0.0, float(percent)))
        self._report(ProgressState(self.job_id, self.attempt, value, message, self._stage))

    def is_cancelled(self) -> bool:
        """Whether cancellation was asked for; long loops can stop early by checking it."""
        return self._cancelled() if self._cancelled is not None else False

    # -- artifacts -------------------------------------------------------------------

    @property
    def artifact_store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore(self.settings.artifacts_url)
        return self._store

    def write_artifact(self, name: str, data: bytes | str) -> ArtifactInfo:
        """Store a file this job produced; it is listed on the job and served over HTTP."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        info = self.artifact_store.write(self.tenant, self.job_id, name, raw, self.attempt)
        self.artifacts[info.name] = info
        return info

    def read_artifact(self, ref: str) -> bytes:
        """The bytes of ``"<job id>/<name>"`` (a job of the same tenant) or of ``"<name>"``
        (this job's own); a missing one is a :class:`PermanentError` naming it."""
        job_id, name = split_ref(ref) if "/" in ref else (self.job_id, ref)
        # Its own files are this attempt's; another job's, those of its newest attempt.
        attempt = self.attempt if job_id == self.job_id else None
        try:
            return self.artifact_store.read(self.tenant, job_id, name, attempt)
        except NotFound as exc:
            raise PermanentError(exc.message) from None

    # -- fan-out ---------------------------------------------------------------------

    def parallel(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        num_cpus: float = 1.0,
        memory: int | None = None,
        on_done: Callable[[int, T], None] | None = None,
    ) -> list[T]:
        """Run zero-argument callables in parallel (Ray tasks in the cluster); results in
        order. ``on_done(index, result)`` runs here as each finishes, for progress. The
        first failure is re-raised as the callable raised it."""
        return self._runner.parallel(calls, num_cpus=num_cpus, memory=memory, on_done=on_done)

    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> Embeddings:
        """Embed ``texts`` on the warm model actors (float32, one row per text, in order).

        ``on_chunk(done, total)`` reports texts embedded so far.
        """
        return self._runner.embed(texts, model=model, normalize=normalize, on_chunk=on_chunk)


class LocalRunner:
    """Runs sub-work in this process, one call after another, with a model loaded here."""

    def __init__(self, embeddings: EmbeddingSettings):
        self.embeddings = embeddings

    def parallel(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        num_cpus: float = 1.0,
        memory: int | None = None,
        on_done: Callable[[int, T], None] | None = None,
    ) -> list[T]:
        results: list[T] = []
        for index, call in enumerate(calls):
            results.append(call())
            if on_done is not None:
                on_done(index, results[-1])
        return results

    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> Embeddings:
        from raypipe.embedding.models import load_cached

        loaded = load_cached(self.embeddings, model)
        embeddings = loaded.encode(list(texts), normalize=normalize)
        if on_chunk is not None:
            on_chunk(len(texts), len(texts))
        return embeddings
