"""Settings: database URL normalisation, defaults, queues and environment variables."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from raypipe.config import (
    BUILTIN_QUEUES,
    DEFAULT_QUEUE,
    QueueConfig,
    get_settings,
    normalize_database_url,
)

# The unit conftest clears RAYPIPE_* variables and runs each test in its own tmp_path.

# -- normalize_database_url -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db:5432/raypipe", "postgresql+psycopg://u:p@db:5432/raypipe"),
        ("postgresql://u@db/raypipe", "postgresql+psycopg://u@db/raypipe"),
        ("postgresql+psycopg://u@db/raypipe", "postgresql+psycopg://u@db/raypipe"),
        ("postgresql+psycopg2://u@db/raypipe", "postgresql+psycopg2://u@db/raypipe"),
        ("sqlite:////var/lib/raypipe.db", "sqlite:////var/lib/raypipe.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
        ("mysql://u@db/x", "mysql://u@db/x"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_normalize_makes_relative_sqlite_path_absolute(tmp_path: Path) -> None:
    # the conftest runs us in tmp_path
    assert (
        normalize_database_url("sqlite:///data/jobs.db")
        == f"sqlite:///{tmp_path.resolve()}/data/jobs.db"
    )


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_normalize_makes_relative_sqlite_path_absolute_for_any_driver(
    scheme: str, tmp_path: Path
) -> None:
    # The store treats every "sqlite…" URL as SQLite; a relative path left as is would
    # point each Ray worker (another working directory) at a different database file.
    assert (
        normalize_database_url(f"{scheme}:///jobs.db")
        == f"{scheme}:///{tmp_path.resolve()}/jobs.db"
    )


def test_normalize_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert normalize_database_url("sqlite:///~/jobs.db") == f"sqlite:///{tmp_path / 'home'}/jobs.db"


def test_normalize_is_idempotent(tmp_path: Path) -> None:
    for url in ("postgres://u@db/x", "sqlite:///rel.db", "sqlite:///:memory:"):
        once = normalize_database_url(url)
        assert normalize_database_url(once) == once


# -- Settings ---------------------------------------------------------------------------


def test_default_database_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path / "d")
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/d/raypipe.db"
    assert settings.is_sqlite
    assert settings.artifacts_url == str(tmp_path.resolve() / "d" / "artifacts")


def test_relative_data_dir_is_made_absolute(tmp_path: Path) -> None:
    settings = get_settings(data_dir="here")
    assert settings.data_dir == tmp_path.resolve() / "here"
    assert settings.data_dir.is_absolute()


def test_default_data_dir(tmp_path: Path) -> None:
    assert get_settings().data_dir == tmp_path.resolve() / "raypipe-data"


def test_database_url_override_is_normalized(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path, database_url="postgres://u@db/raypipe")
    assert settings.database_url == "postgresql+psycopg://u@db/raypipe"
    assert not settings.is_sqlite


def test_builtin_queues_always_present(tmp_path: Path) -> None:
    assert get_settings(data_dir=tmp_path).queues == dict(BUILTIN_QUEUES)
    assert DEFAULT_QUEUE in BUILTIN_QUEUES
    settings = get_settings(
        data_dir=tmp_path, queues={"gpu": {"concurrency": 2}, "mesh": {"concurrency": 3}}
    )
    assert set(settings.queues) == {"gpu", *BUILTIN_QUEUES}
    assert settings.queues["mesh"].concurrency == 3
    assert settings.queues["gpu"] == QueueConfig(concurrency=2, priority=0)
    assert settings.queues[DEFAULT_QUEUE].concurrency == 400


def test_configured_default_queue_is_kept(tmp_path: Path) -> None:
    settings = get_settings(
        data_dir=tmp_path, queues={"default": {"concurrency": 3, "priority": 7}}
    )
    assert settings.queues["default"] == QueueConfig(concurrency=3, priority=7)
    assert set(settings.queues) == set(BUILTIN_QUEUES)


def test_default_queue_is_not_shared_between_settings(tmp_path: Path) -> None:
    a = get_settings(data_dir=tmp_path)
    b = get_settings(data_dir=tmp_path)
    a.queues["extra"] = QueueConfig()
    assert "extra" not in b.queues


@pytest.mark.parametrize(
    ("queue", "field"), [({"concurrency": 0}, "concurrency"), ({"priority": -1}, "priority")]
)
def test_queue_config_bounds(tmp_path: Path, queue: dict[str, int], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        get_settings(data_dir=tmp_path, queues={"q": queue})
    assert info.value.errors()[0]["loc"] == ("queues", "q", field)


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYPIPE_DATABASE_URL", "postgresql://raypipe@pg:5432/jobs")
    settings = get_settings(data_dir=tmp_path)
    assert settings.database_url == "postgresql+psycopg://raypipe@pg:5432/jobs"


def test_keyword_overrides_beat_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAYPIPE_DATABASE_URL", "postgresql://raypipe@pg/jobs")
    monkeypatch.setenv("RAYPIPE_DEFAULT_MAX_ATTEMPTS", "9")
    settings = get_settings(data_dir=tmp_path, default_max_attempts=2)
    assert settings.engine.default_max_attempts == 2
    assert settings.database_url == "postgresql+psycopg://raypipe@pg/jobs"


def test_queues_from_environment_as_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    queues = {"gpu": {"concurrency": 2, "priority": 10}, "bulk": {"concurrency": 500}}
    monkeypatch.setenv("RAYPIPE_QUEUES", json.dumps(queues))
    settings = get_settings(data_dir=tmp_path)
    assert settings.queues == {
        "gpu": QueueConfig(concurrency=2, priority=10),
        "bulk": QueueConfig(concurrency=500, priority=0),
        **dict(BUILTIN_QUEUES),
    }


def test_scalars_and_lists_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("RAYPIPE_CLAIM_BATCH", "42")
    monkeypatch.setenv("RAYPIPE_PROCESSOR_MODULES", '["my.procs", "other.procs"]')
    settings = get_settings()
    assert settings.data_dir == tmp_path.resolve() / "env-data"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/env-data/raypipe.db"
    assert settings.engine.claim_batch == 42
    assert settings.processor_modules == ["my.procs", "other.procs"]


def test_dotenv_file_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RAYPIPE_NAMESPACE=from-dotenv\n")
    assert get_settings(data_dir=tmp_path).namespace == "from-dotenv"


def test_invalid_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_CLAIM_BATCH", "0")
    with pytest.raises(pydantic.ValidationError):
        get_settings()


def test_settings_survive_pickling(tmp_path: Path) -> None:
    # Settings are shipped to Ray actors.
    import pickle

    settings = get_settings(data_dir=tmp_path, queues={"gpu": {"concurrency": 2}})
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
