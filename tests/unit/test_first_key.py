"""The first admin key `raypipe up` shows is also kept in the data folder, for its user only."""

from __future__ import annotations

import os
from pathlib import Path

from raypipe import cli
from raypipe.config import get_settings
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from raypipe.store.schema_version import upgrade


def test_the_first_key_file_is_created_readable_by_its_user_only(tmp_path: Path) -> None:
    settings = get_settings(
        database_url=f"sqlite:///{tmp_path / 'raypipe.db'}", data_dir=tmp_path / "data"
    )
    settings.data_dir.mkdir()
    engine = create_engine(settings.database_url)
    upgrade(engine)
    old = os.umask(0)  # the most open umask: the file's mode must not depend on it
    try:
        cli._first_key(settings)
    finally:
        os.umask(old)
    path = settings.data_dir / "api-key"
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_text().strip()
    assert AccessStore(engine).find_key(secret) is not None
    engine.dispose()
