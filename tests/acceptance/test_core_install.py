"""``pip install raypipe`` without extras, in a fresh virtualenv: the queue, the API, the
client and the CLI only. The built-in workloads whose extras are missing are not
registered, and a job of one is refused naming the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def core_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the core dependencies of pyproject.toml, at the pinned versions
    of constraints.txt; raypipe itself comes from this checkout."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), *core],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return venv / "bin" / "python"


def test_the_core_runs_the_queue_and_names_the_missing_extras(
    core_python: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYPIPE_", "RAY_ADDRESS"))}
    env.update(
        PYTHONPATH=str(ROOT),
        RAYPIPE_DATA_DIR=str(tmp_path / "data"),
        RAYPIPE_NAMESPACE=f"core-{uuid.uuid4().hex[:8]}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    done = subprocess.run(
        [str(core_python), str(ROOT / "tests" / "helpers" / "core_only.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["installed"] == []
    assert seen["results"] == {"noop": {}, "sleep": {"slept": 0.1}}
    assert "needs raypipe[embeddings]" in seen["refused_here"]
    assert {"noop", "sleep", "ai.complete"} <= set(seen["types"])
    assert not {"embed.texts", "mesh.from_image", "document.process"} & set(seen["types"])
    assert seen["http_status"] == 422
    assert seen["http_error"]["message"] == (
        "type: job type 'mesh.from_image' needs raypipe[mesh]: pip install 'raypipe[mesh]'"
    )
    assert seen["not_installed"] == {
        "embed.texts": "embeddings",
        "mesh.from_image": "mesh",
        "document.process": "documents",
    }
