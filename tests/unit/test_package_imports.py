"""What importing raypipe costs a process Ray starts for it.

Every dispatcher, progress actor, webhook sender, task worker and pool actor imports
``raypipe`` first; the public names are imported on first use (``raypipe/__init__.py``),
so none of these processes loads the clients it never uses. Each import runs in a fresh
interpreter: this one has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import raypipe

#: Modules no process of the runtime needs (the clients users call).
CLIENT_MODULES = ("raypipe.client", "raypipe.direct")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_every_public_name_resolves_to_its_module_s_object() -> None:
    for name in raypipe.__all__:
        value = getattr(raypipe, name)
        assert value is getattr(sys.modules[raypipe._PUBLIC[name]], name)
    assert set(raypipe._PUBLIC) == set(raypipe.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        raypipe.nothing  # noqa: B018


@pytest.mark.parametrize(
    "module",
    [
        "raypipe.runtime.dispatcher",
        "raypipe.runtime.progress",
        "raypipe.runtime.webhook_sender",
        "raypipe.runtime.executor",
        "raypipe.runtime.pool_worker",
    ],
)
def test_the_runtime_s_processes_import_no_client(module: str) -> None:
    imported = _imported_after(f"import {module}")
    assert module in imported
    assert not imported.intersection(CLIENT_MODULES)


def test_importing_the_package_alone_loads_neither_ray_nor_a_client() -> None:
    imported = _imported_after("import raypipe")
    assert "raypipe.log_format" in imported  # its records are escaped from the start
    assert not imported.intersection({*CLIENT_MODULES, "ray", "httpx", "sqlalchemy"})
