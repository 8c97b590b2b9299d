"""Shared fixtures: isolated databases (SQLite and PostgreSQL), one local Ray per session."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import ray
import sqlalchemy as sa

from raypipe.config import Settings, get_settings
from raypipe.store import create_engine, schema_version

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "RAYPIPE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
#: One template per test run, so that runs side by side (a developer's and CI's) never drop
#: each other's.
PG_TEMPLATE = f"raypipe_test_template_{os.getpid()}"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: mypy's cache, outside the checkout: a fresh clone on the same machine reuses what an
#: earlier run checked (mypy trusts an entry only while its file's hash is unchanged).
MYPY_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raypipe-mypy"

# Ray workers import the tests' own processors from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(delay)
        delay = min(0.2, delay * 1.5)


def read_at_end(
    ended: Callable[[], bool], read: Callable[[], T], timeout: float = 60.0, what: str = ""
) -> T:
    """``read()`` at once after ``ended()`` first holds, polled every few milliseconds:
    what a client reads the moment it sees an end, with no wait and no second try, so
    that what is written only just after the end shows up missing."""
    deadline = time.monotonic() + timeout
    while not ended():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or ended}")
        time.sleep(0.005)
    return read()


# -- databases ---------------------------------------------------------------------------


def _pg_admin() -> sa.Engine | None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        engine.dispose()
        return None
    return engine


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An admin connection to PostgreSQL, with a migrated template database.

    A missing server skips PostgreSQL tests on a laptop and fails them in CI.
    """
    engine = _pg_admin()
    if engine is None:
        message = f"PostgreSQL unreachable at {PG_ADMIN_URL}"
        if IN_CI:
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_TEMPLATE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {PG_TEMPLATE}"))
    template = create_engine(_pg_url(PG_TEMPLATE))
    schema_version.upgrade(template)
    template.dispose()
    yield engine
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_TEMPLATE} WITH (FORCE)"))
    engine.dispose()


def _pg_url(database: str) -> str:
    return (
        sa.engine.make_url(PG_ADMIN_URL)
        .set(database=database)
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "raypipe.db"
    engine = create_engine(f"sqlite:///{path}")
    schema_version.upgrade(engine)
    engine.dispose()  # closing the last connection folds the WAL into the file
    return path


#: For the tests where the database kind does not change what is tested.
POSTGRES_ONLY = [pytest.param("postgres", marks=pytest.mark.postgres)]
DB_KINDS = ["sqlite", *POSTGRES_ONLY]
#: For tests of the runtime's decisions, which ``tests/unit/controller`` checks round by
#: round on the in-memory cluster: these check what Ray really does (tasks killed, actors
#: replaced, resources held), on the Quickstart's database. What they write is written by
#: the same store functions on both databases, which the store's own tests run on both.
RAY_SIDE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@contextmanager
def fresh_database(request: pytest.FixtureRequest, kind: str, folder: Path) -> Iterator[str]:
    """A migrated database of ``kind``: a copied SQLite file, or a PostgreSQL database
    created from the migrated template."""
    if kind == "sqlite":
        target = folder / "raypipe.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    admin: sa.Engine = request.getfixturevalue("pg_admin")
    name = f"raypipe_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {PG_TEMPLATE}"))
    yield _pg_url(name)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per test, on SQLite and on PostgreSQL."""
    with fresh_database(request, request.param, tmp_path) as url:
        yield url


def make_settings(db_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: their own database, data folder and Ray namespace, fast timings."""
    return get_settings(
        **{
            "database_url": db_url,
            "data_dir": data_dir,
            "namespace": f"t-{uuid.uuid4().hex[:10]}",
            "processor_modules": ["tests.helpers.processors"],
            "queues": {
                "solo": {"concurrency": 1},
                "pair": {"concurrency": 2},
            },
            # The tests' pool processors (tests/helpers/processors.py) run here; unused, it
            # holds nothing.
            "pools": {"test": {"concurrency": 2, "max_size": 1}},
            "poll_interval_s": 0.5,
            "lease_ttl_s": 3.0,
            "default_backoff_s": 0.2,
            "cancel_grace_s": 2.0,
            "progress_report_interval_s": 0.05,
            "progress_flush_interval_s": 0.1,
            # Built-in maintenance would add jobs whenever a test spans its instants.
            "maintenance_schedules": False,
            **overrides,
        }
    )


@contextmanager
def fresh_settings(
    request: pytest.FixtureRequest, kind: str, folder: Path, **overrides: object
) -> Iterator[Settings]:
    """:func:`make_settings` on a fresh database of ``kind`` (:func:`fresh_database`), with
    their data folder in ``folder``."""
    with fresh_database(request, kind, folder) as url:
        yield make_settings(url, folder / "data", **overrides)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for one test (see :func:`make_settings`)."""
    return make_settings(db_url, tmp_path / "data")


@pytest.fixture(scope="session", autouse=True)
def ray_address_file() -> Iterator[None]:
    """Ray's "current cluster" file, as it was before the tests.

    `raypipe down` clears it when it names the head `up` started, but a simulated cluster
    (``ray.cluster_utils.Cluster``) writes it and leaves it pointing at a head that is
    gone, and `up`'s ``ray start`` replaced what it named before (which `down` names
    again only if that cluster still answers then): a later bare ``ray.init()`` on this
    machine would wait for a gone head, or start where it used to join.
    """
    path = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    before = path.read_bytes() if path.exists() else None
    yield
    if before is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(before)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray for the whole session, with a fixed number of CPUs."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        # Metrics reach Ray's endpoint within a second (default: every 10 s).
        _system_config={"metrics_report_interval_ms": 1000},
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def serve_port(ray_session: None) -> Iterator[int]:
    """Serve's HTTP proxy, started once for the session on a free loopback port."""
    from ray import serve  # only sessions that serve pay for importing it

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
