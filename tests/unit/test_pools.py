"""Pool settings: what each actor holds, its job slots, and configurations a cluster cannot
honour."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from raypipe.config import get_settings
from raypipe.jobs import ClaimedJob
from raypipe.runtime.pools import Member, Pool, unsatisfiable


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


@pytest.mark.parametrize(
    ("pool", "changes", "slots"),
    [
        ("workers", {}, 400),  # a bundle of 200 running one by one, one more waiting
        ("embeddings", {}, 64),  # a bundle of 32 running at once, one more waiting
        ("test", {}, 2),  # the defaults: one job running, one waiting
        ("test", {"concurrency": 4}, 5),  # four running, one waiting
        ("test", {"concurrency": 4, "bundle": 3, "prefetch": 0}, 6),  # two bundles running
    ],
)
def test_an_actor_holds_the_bundles_that_keep_it_busy_and_its_prefetch(
    tmp_path: Path, pool: str, changes: dict[str, int], slots: int
) -> None:
    settings = get_settings(data_dir=tmp_path, pools={pool: changes})
    assert Pool(pool, settings.pools[pool], settings, 0).slots_per_actor == slots


def _jobs(n: int) -> list[ClaimedJob]:
    return [ClaimedJob(f"j{i}", "embed.texts", "embeddings", {}, 1, 3, 600.0) for i in range(n)]


def test_jobs_go_to_the_freest_actor_in_bundles_and_free_their_slots_one_by_one(
    tmp_path: Path,
) -> None:
    settings = get_settings(data_dir=tmp_path)
    pool = Pool("embeddings", settings.pools["embeddings"], settings, 0)
    a, b = Member("a", handle=None), Member("b", handle=None)
    pool.members = {"a": a, "b": b}
    calls = pool.place(_jobs(70))
    assert [(m.name, len(jobs)) for m, jobs in calls] == [("a", 32), ("b", 32), ("a", 6)]
    assert (a.jobs, b.jobs, pool.room().free_slots) == (38, 32, 128 - 70)
    pool.release(b, 31)
    assert pool.idle() == [] and pool.room().free_slots == 128 - 39
    pool.release(b)
    assert pool.idle() == [b]
    # An actor with few free slots gets a call of that many: it is never overfilled.
    [(member, jobs)] = pool.place(_jobs(20))
    assert (member, len(jobs)) == (b, 20)
    assert [len(jobs) for _, jobs in pool.place(_jobs(60))] == [32, 26, 2]
