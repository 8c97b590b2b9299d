"""Tenant names are checked where a key or a schedule row is made, and never leave their
artifact folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.artifacts import ArtifactStore
from raypipe.exceptions import InvalidInput
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from raypipe.store.schema_version import upgrade
from raypipe.tenants import check_tenant

BAD = ["..", ".", "", "a/b", "a b", "../x", "x\n", "-x", "a..b", "x" * 101]


@pytest.mark.parametrize("tenant", BAD)
def test_names_outside_the_rule_are_refused_naming_it(tenant: str) -> None:
    with pytest.raises(InvalidInput, match="use letters, digits"):
        check_tenant(tenant)


@pytest.mark.parametrize("tenant", ["default", "acme", "team-2.eu_west", "x" * 100])
def test_plain_names_are_kept(tenant: str) -> None:
    assert check_tenant(tenant) == tenant


def test_a_key_for_a_bad_tenant_is_never_made(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'raypipe.db'}")
    upgrade(engine)
    access = AccessStore(engine)
    with pytest.raises(InvalidInput, match=r"tenant '\.\.'"):
        access.create_key("..")
    assert access.count_keys() == 0
    engine.dispose()


@pytest.mark.parametrize("tenant", ["..", "."])
def test_an_artifact_folder_never_leaves_its_tenant(tmp_path: Path, tenant: str) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(InvalidInput):
        store.folder(tenant, "0" * 8 + "-0000-0000-0000-" + "0" * 12)
