"""Settings: database URL normalisation, defaults, queues and environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from raypipe.config import (
    BUILTIN_QUEUES,
    DEFAULT_QUEUE,
    FLAT_NAMES,
    GROUPS,
    QueueConfig,
    Settings,
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


# -- Groups, and the flat names users already have ---------------------------------------

#: Every setting's name before settings were grouped (issue 34): users' RAYPIPE_* variables,
#: .env and TOML keys and keyword overrides are spelled this way.
FLAT = [
    "data_dir",
    "database_url",
    "ray_address",
    "ray_port",
    "ray_num_cpus",
    "namespace",
    "queues",
    "pools",
    "processor_modules",
    "default_max_attempts",
    "default_timeout_s",
    "default_backoff_s",
    "priority_aging_s",
    "fair_share",
    "tenant_weights",
    "tenant_usage_half_life_s",
    "max_backoff_s",
    "poll_interval_s",
    "dispatch_interval_s",
    "lease_ttl_s",
    "claim_batch",
    "max_in_flight",
    "task_prefetch",
    "cancel_grace_s",
    "drain_grace_s",
    "api_host",
    "api_port",
    "api_replicas",
    "max_body_bytes",
    "api_body_timeout_s",
    "api_max_requests_per_key",
    "api_max_requests_per_tenant",
    "api_max_streams_per_key",
    "api_max_streams_per_tenant",
    "api_max_streams",
    "max_bulk_jobs",
    "tenant_priority_min",
    "tenant_priority_max",
    "rate_limits",
    "events_poll_interval_s",
    "progress_report_interval_s",
    "progress_flush_interval_s",
    "log_max_bytes",
    "log_level",
    "log_format",
    "artifacts_url",
    "max_input_bytes",
    "max_schedules_per_tenant",
    "max_document_chars",
    "max_document_pages",
    "max_document_depth",
    "max_document_nodes",
    "max_document_stage_cpu_s",
    "fetch_timeout_s",
    "fetch_max_redirects",
    "fetch_allow_networks",
    "outbound_allow_networks",
    "embedding_models",
    "embedding_model",
    "embedding_fallback_model",
    "embedding_threads",
    "embedding_batch_size",
    "embedding_max_wait_ms",
    "embedding_chunk_size",
    "embedding_max_texts",
    "mesh_max_pixels",
    "mesh_max_vertices",
    "mesh_memory_bytes",
    "mesh_tile_rows",
    "ai_base_url",
    "ai_api_key",
    "ai_model",
    "ai_fallback_model",
    "ai_timeout_s",
    "ai_run_limit",
    "max_batch_jobs",
    "webhook_allow_networks",
    "webhook_timeout_s",
    "webhook_max_attempts",
    "webhook_backoff_s",
    "webhook_max_backoff_s",
    "webhook_poll_interval_s",
    "webhook_concurrency",
    "schedules",
    "maintenance_schedules",
    "retention_days",
    "orphan_grace_s",
    "stuck_after_s",
]


def test_every_name_users_have_is_still_a_setting() -> None:
    top = {name for name in Settings.model_fields if name not in GROUPS}
    assert not top & set(FLAT_NAMES)
    assert top | set(FLAT_NAMES) == set(FLAT)


@pytest.mark.parametrize(
    ("variable", "value", "where"),
    [
        ("RAYPIPE_LEASE_TTL_S", "3", ("engine", "lease_ttl_s", 3.0)),
        ("RAYPIPE_LOG_LEVEL", "DEBUG", ("logs", "level", "DEBUG")),
        ("RAYPIPE_API_MAX_STREAMS", "5", ("api", "max_streams", 5)),
        ("RAYPIPE_MAX_BATCH_JOBS", "3", ("limits", "max_batch_jobs", 3)),
        ("RAYPIPE_FETCH_MAX_REDIRECTS", "0", ("fetch", "max_redirects", 0)),
        ("RAYPIPE_MAX_INPUT_BYTES", "10", ("fetch", "max_input_bytes", 10)),
        ("RAYPIPE_WEBHOOK_CONCURRENCY", "2", ("webhooks", "concurrency", 2)),
        ("RAYPIPE_EMBEDDING_BATCH_SIZE", "8", ("embeddings", "batch_size", 8)),
        ("RAYPIPE_EMBEDDING_FALLBACK_MODEL", "m", ("embeddings", "fallback_model", "m")),
        ("RAYPIPE_MESH_MEMORY_BYTES", "1000", ("mesh", "memory_bytes", 1000)),
        ("RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S", "1.5", ("documents", "max_stage_cpu_s", 1.5)),
        ("RAYPIPE_AI_TIMEOUT_S", "2", ("ai", "timeout_s", 2.0)),
        ("RAYPIPE_MAINTENANCE_SCHEDULES", "false", ("maintenance", "schedules", False)),
        ("RAYPIPE_RETENTION_DAYS", "7", ("maintenance", "retention_days", 7.0)),
    ],
)
def test_old_variables_set_their_grouped_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, where: tuple[str, str, Any]
) -> None:
    group, field, expected = where
    assert FLAT_NAMES[variable.removeprefix("RAYPIPE_").lower()] == (group, field)
    assert getattr(getattr(get_settings(), group), field) != expected
    monkeypatch.setenv(variable, value)
    assert getattr(getattr(get_settings(), group), field) == expected


def test_old_json_variables_dotenv_and_toml_keys_reach_their_groups(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAYPIPE_EMBEDDING_MODELS", '{"m": "/models/m"}')
    monkeypatch.setenv("RAYPIPE_WEBHOOK_ALLOW_NETWORKS", '["10.0.0.0/8"]')
    monkeypatch.setenv("RAYPIPE_AI_API_KEY", "sk-1")
    (tmp_path / ".env").write_text("RAYPIPE_MAX_DOCUMENT_PAGES=12\n")
    (tmp_path / "raypipe.toml").write_text(
        "mesh_tile_rows = 64\nmaintenance_schedules = false\n[ai]\nmodel = 'm9'\n"
    )
    settings = get_settings(data_dir=tmp_path)
    assert settings.embeddings.models == {"m": "/models/m"}
    assert settings.webhooks.allow_networks == ["10.0.0.0/8"]
    assert settings.ai.api_key is not None and settings.ai.api_key.get_secret_value() == "sk-1"
    assert settings.documents.max_pages == 12
    assert settings.mesh.tile_rows == 64
    assert settings.maintenance.schedules is False
    assert settings.ai.model == "m9"


def test_precedence_holds_field_by_field_whichever_spelling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAYPIPE_EMBEDDING_BATCH_SIZE", "9")
    monkeypatch.setenv("RAYPIPE_EMBEDDING_CHUNK_SIZE", "99")
    (tmp_path / "raypipe.toml").write_text("[embeddings]\nbatch_size = 5\nmax_texts = 5\n")
    settings = get_settings(data_dir=tmp_path, embeddings={"chunk_size": 3})
    assert settings.embeddings.batch_size == 9  # the environment beats the file
    assert settings.embeddings.chunk_size == 3  # a keyword beats the environment
    assert settings.embeddings.max_texts == 5
    assert settings.embeddings.model == "all-MiniLM-L6-v2"  # the others keep their default


def test_flat_keywords_in_copies_change_only_their_field(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path, webhook_max_attempts=3)
    copy = settings.model_copy(update={"max_batch_jobs": 3, "webhook_backoff_s": 9.0})
    assert (copy.limits.max_batch_jobs, copy.webhooks.backoff_s) == (3, 9.0)
    assert copy.webhooks.max_attempts == 3
    assert settings.limits.max_batch_jobs == 10_000
    flat = copy.flat_dump(mode="json", include={"max_batch_jobs", "lease_ttl_s"})
    assert flat == {"max_batch_jobs": 3, "lease_ttl_s": 60.0}


def test_code_reading_a_flat_name_gets_its_grouped_field_with_a_deprecation(
    tmp_path: Path,
) -> None:
    settings = get_settings(data_dir=tmp_path, embedding_batch_size=16)
    with pytest.warns(DeprecationWarning, match=r"settings.embedding_batch_size is settings"):
        assert settings.embedding_batch_size == settings.embeddings.batch_size == 16
    with pytest.raises(AttributeError, match="no_such_setting"):
        settings.no_such_setting  # noqa: B018


@pytest.mark.parametrize(
    ("given", "loc"),
    [
        ({"embedding_batch_size": 0}, ("embedding_batch_size",)),
        ({"embeddings": {"batch_size": 0}}, ("embedding_batch_size",)),
        ({"max_document_depth": 0}, ("max_document_depth",)),
        ({"rate_limits": {"submit": {"limit": 0}}}, ("rate_limits", "submit", "limit")),
        ({"tenant_priority_min": 9, "tenant_priority_max": 1}, ()),
    ],
)
def test_errors_name_the_setting_as_users_spell_it(
    tmp_path: Path, given: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        get_settings(data_dir=tmp_path, **given)
    assert [error["loc"] for error in info.value.errors()] == [loc]
