"""What the scripts in bench/ share: a local Ray of fixed size, a fresh migrated database."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import sqlalchemy as sa

from raypipe.store import create_engine, schema_version

PG_ADMIN_URL = os.environ.get(
    "RAYPIPE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh migrated database of ``kind``; dropped afterwards (PostgreSQL)."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        admin = None
    else:
        name = f"raypipe_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    engine = create_engine(url)
    schema_version.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()


def start_ray(num_cpus: int) -> None:
    """A local Ray of ``num_cpus`` CPUs for this run, quiet and without the dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
