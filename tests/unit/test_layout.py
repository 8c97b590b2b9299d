"""The layout's rules, read from the code's own imports, so that they stay true.

- Only ``raypipe.store`` builds SQL: elsewhere, SQLAlchemy is imported for its engine type,
  URL parsing and errors (``sqlalchemy.engine``, ``sqlalchemy.exc``), never for statements.
- ``raypipe.store`` imports nothing from the layers above it (API, runtime, commands).
- Ray, for running work, is imported by ``raypipe.runtime`` only; the API also imports Ray
  Serve (``ray.serve``) to deploy itself and reads actors' health, the CLI connects.
- A concept keeps one name in every layer: route and command modules are named after
  the store module of their record.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "raypipe"
SQL_TYPES_ONLY = ("sqlalchemy.engine", "sqlalchemy.exc")
ABOVE_STORE = ("raypipe.api", "raypipe.runtime", "raypipe.commands", "raypipe.cli")
#: Modules outside raypipe.runtime that may import Ray, and why.
RAY_ALLOWED = {
    "raypipe.api.routes.health": "the health route asks raypipe's actors how they are",
    "raypipe.api.deployment": "deploys the API on Ray Serve",
    "raypipe.cli": "`raypipe up` and `down` connect to the cluster",
    "raypipe.metrics": "Ray's metrics API, imported only inside a Ray process",
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # frozen snapshots of the schema
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[str]:
    """What each import statement takes (``from a import b`` takes ``a.b``), at any depth:
    lazy imports count."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


MODULES = dict(modules())


def test_the_rules_see_the_package() -> None:
    assert {"raypipe.store.jobs", "raypipe.runtime.dispatcher", "raypipe.cron"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_store_builds_sql(name: str) -> None:
    if within(name, "raypipe.store"):
        return
    statements = sorted(
        module
        for module in imported(MODULES[name])
        if within(module, "sqlalchemy") and not within(module, *SQL_TYPES_ONLY)
    )
    assert statements == [], f"{name} imports {statements}: SQL belongs in raypipe.store"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if within(n, "raypipe.store")))
def test_the_store_imports_nothing_from_the_layers_above_it(name: str) -> None:
    above = sorted(m for m in imported(MODULES[name]) if within(m, *ABOVE_STORE))
    assert above == [], f"{name} imports {above}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_runtime_imports_ray(name: str) -> None:
    if within(name, "raypipe.runtime") or name in RAY_ALLOWED:
        return
    uses = sorted(m for m in imported(MODULES[name]) if within(m, "ray"))
    assert uses == [], f"{name} imports {uses}"


#: Route modules that serve no record of the store, and why.
ROUTES_WITHOUT_A_RECORD = {"health": "the operator's /health and the job page"}


@pytest.mark.parametrize("layer", ["raypipe.api.routes", "raypipe.commands"])
def test_each_concept_keeps_its_name_in_every_layer(layer: str) -> None:
    """``schedules`` is ``store/schedules.py``, ``api/routes/schedules.py`` and
    ``commands/schedules.py``: a route or command module is named after its record."""
    names = {n.rsplit(".", 1)[1] for n in MODULES if n.startswith(layer + ".")}
    stored = {n.rsplit(".", 1)[1] for n in MODULES if n.startswith("raypipe.store.")}
    assert names, f"no modules under {layer}"
    assert sorted(names - stored - ROUTES_WITHOUT_A_RECORD.keys()) == []
