"""Pool settings: what each actor holds, and configurations a cluster cannot honour."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from raypipe.config import get_settings
from raypipe.runtime.pools import Pool, unsatisfiable


@pytest.mark.parametrize(
    ("configured", "cluster_gpus", "per_actor"),
    [
        (None, 0, {"CPU": 1.0}),
        (None, 4, {"CPU": 1.0, "GPU": 1.0}),
        (0.25, 4, {"CPU": 1.0, "GPU": 0.25}),
    ],
)
def test_a_model_pool_takes_a_gpu_per_actor_where_there_are_any(
    tmp_path: Path, configured: float | None, cluster_gpus: float, per_actor: dict[str, float]
) -> None:
    settings = get_settings(data_dir=tmp_path, pools={"embeddings": {"num_gpus": configured}})
    pool = Pool("embeddings", settings.pools["embeddings"], settings, cluster_gpus)
    assert pool.actor == per_actor


def test_configuring_a_built_in_pool_changes_only_the_fields_named(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path, pools={"embeddings": {"max_size": 4}})
    embeddings = settings.pools["embeddings"]
    assert (embeddings.max_size, embeddings.concurrency, embeddings.idle_s) == (4, 32, 600.0)
    assert settings.pools["workers"].bundle == 200


def test_min_size_beyond_max_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="min_size"):
        get_settings(data_dir=tmp_path, pools={"workers": {"min_size": 3, "max_size": 2}})


def test_min_sizes_the_cluster_cannot_hold_name_the_setting(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path, pools={"embeddings": {"min_size": 3, "max_size": 3}})
    assert unsatisfiable(settings, {"CPU": 2.0}) == [
        "pools.embeddings.min_size=3 needs 3 CPU, the cluster has 2 CPU"
    ]
    both = get_settings(
        data_dir=tmp_path, pools={"embeddings": {"min_size": 1}, "workers": {"min_size": 2}}
    )
    assert unsatisfiable(both, {"CPU": 2.0}) == [
        "the pools' min_size together need 3 CPU, more than the cluster has"
    ]
    assert unsatisfiable(get_settings(data_dir=tmp_path), {"CPU": 2.0}) == []
