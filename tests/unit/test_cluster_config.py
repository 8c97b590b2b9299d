"""The cluster files: `cluster.yaml`, `serve_config.yaml` and the KubeRay `RayService`.

Each is checked by the code Ray itself runs on it (nothing is launched): the launcher's
config by the autoscaler's own loader (``prepare_config`` + ``validate_config``), the Serve
configs by ``ServeDeploySchema``, the RayService's cluster by the derivation KubeRay's
autoscaler applies to it. The rest asserts what raypipe needs from them.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray import serve
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from raypipe.api.deployment import APP_NAME, DEPLOYMENT_NAME
from raypipe.config import Settings

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
SERVE_CONFIG = REPO / "serve_config.yaml"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"

#: Where the launcher's setup installs raypipe from (a file mount of this checkout).
INSTALL = re.compile(r"pip install -e ([~\w./-]+)")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _launcher_config(raw: dict[str, Any] | None = None) -> AutoscalingConfig:
    """The config as the head's autoscaler (v2, Ray's default) loads it: defaults filled
    in by ``prepare_config``, then ``validate_config`` against Ray's schema."""
    return AutoscalingConfig(raw or _load(CLUSTER_YAML), skip_content_hash=True)


def _setup_by_node_type(config: AutoscalingConfig) -> dict[str, list[str]]:
    head = config.get_head_node_type()
    return {
        name: config.get_head_setup_commands()
        if name == head
        else config.get_worker_setup_commands(name)
        for name in config.get_node_type_configs()
    }


def _mounted_from(remote: str) -> Path:
    """The local path the launcher copies to ``remote`` on every node (run from the repo)."""
    for target, local in _load(CLUSTER_YAML)["file_mounts"].items():
        if remote == target or remote.startswith(target.rstrip("/") + "/"):
            return (REPO / local / remote[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{remote} is not under any file mount")


# -- cluster.yaml --------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation() -> None:
    config = _launcher_config()

    assert config.provider.name == "AWS"
    assert config.get_head_node_type() == "ray.head.default"


def test_rays_validation_refuses_a_broken_cluster_yaml() -> None:
    """The check above is live: what Ray would refuse at `ray up` fails here too."""
    raw = _load(CLUSTER_YAML)
    misspelt = copy.deepcopy(raw)
    misspelt["available_node_types"]["ray.worker.gpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        _launcher_config(misspelt)

    too_small = copy.deepcopy(raw)
    too_small["max_workers"] = 0  # below the CPU workers' min_workers
    with pytest.raises(ValueError, match="max_workers"):
        _launcher_config(too_small)


def test_cluster_has_a_head_and_a_cpu_and_a_gpu_worker_type_with_bounds() -> None:
    raw_types = _load(CLUSTER_YAML)["available_node_types"]
    config = _launcher_config()
    types = config.get_node_type_configs()
    head = config.get_head_node_type()
    workers = {name: node for name, node in types.items() if name != head}

    assert types[head].resources.get("CPU") == 0, "jobs run on workers, not the head"
    assert len(workers) == 2
    gpu = [name for name, node in workers.items() if node.resources.get("GPU", 0) >= 1]
    cpu = [name for name, node in workers.items() if node.resources.get("GPU", 0) == 0]
    assert len(gpu) == 1
    assert len(cpu) == 1
    assert workers[cpu[0]].resources.get("CPU", 0) >= 1
    for name, node in workers.items():
        assert {"min_workers", "max_workers"} <= raw_types[name].keys()
        assert node.min_worker_nodes <= node.max_worker_nodes
    # CPU work always has a node; GPU nodes start from zero when GPU work waits.
    assert workers[cpu[0]].min_worker_nodes >= 1
    assert workers[gpu[0]].min_worker_nodes == 0
    assert sum(node.max_worker_nodes for node in workers.values()) <= (
        config.get_max_num_worker_nodes()
    )


def test_every_node_installs_raypipe_from_this_checkout_with_the_cluster_settings() -> None:
    for node_type, commands in _setup_by_node_type(_launcher_config()).items():
        script = "\n".join(commands)
        installs = INSTALL.findall(script)
        assert installs, f"{node_type} does not install raypipe"
        source = _mounted_from(installs[0])
        assert source == REPO
        assert 'name = "raypipe"' in (source / "pyproject.toml").read_text()
        assert "torch==" in script, f"{node_type} leaves the torch build to chance"
        for name in ("RAYPIPE_DATABASE_URL=postgresql", "RAYPIPE_ARTIFACTS_URL=s3://"):
            assert name in script, f"{node_type} does not set {name.split('=')[0]}"


def test_only_the_gpu_worker_type_installs_a_cuda_torch() -> None:
    setups = _setup_by_node_type(_launcher_config())
    resources = {n: c.resources for n, c in _launcher_config().get_node_type_configs().items()}

    for node_type, commands in setups.items():
        cuda = any("download.pytorch.org/whl/cu" in command for command in commands)
        assert cuda == (resources[node_type].get("GPU", 0) > 0), node_type


def test_start_commands_start_ray_on_raypipes_port_then_raypipe_then_serve() -> None:
    config = _launcher_config()
    port = Settings.model_fields["ray_port"].default
    head = config.get_head_start_ray_commands()
    workers = config.get_worker_start_ray_commands()

    def index(commands: list[str], pattern: str) -> int:
        found = [i for i, command in enumerate(commands) if re.search(pattern, command)]
        assert found, f"no command matches {pattern!r} in {commands}"
        return found[0]

    start = head[index(head, r"ray start --head")]
    assert f"--port={port}" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start, "no autoscaling"
    assert f"--address=$RAY_HEAD_IP:{port}" in workers[index(workers, r"ray start")]
    deploy = head[index(head, r"^serve deploy ")]
    assert (
        index(head, r"ray start --head")
        < index(head, r"^raypipe up --no-api$")
        < index(head, r"^serve deploy ")
    )
    assert _mounted_from(deploy.split()[-1]) == SERVE_CONFIG


# -- serve_config.yaml ---------------------------------------------------------------------


def test_serve_config_passes_serves_schema_and_its_import_path_imports() -> None:
    schema = ServeDeploySchema.model_validate(_load(SERVE_CONFIG))

    [application] = schema.applications
    assert application.name == APP_NAME
    assert [d.name for d in application.deployments] == [DEPLOYMENT_NAME]
    module, _, attribute = application.import_path.partition(":")
    assert isinstance(getattr(importlib.import_module(module), attribute), serve.Application)


def test_serve_config_is_what_serve_build_makes(tmp_path: Path) -> None:
    """Regenerating with `serve build serve_app:app` changes nothing but the app's name."""
    built = tmp_path / "built.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "serve_app:app", "-o", str(built)],
        cwd=tmp_path,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = _load(built)
    expected["applications"][0]["name"] = APP_NAME

    assert _load(SERVE_CONFIG) == expected


# -- the KubeRay RayService ----------------------------------------------------------------


def test_rayservice_serves_the_same_applications_as_serve_config() -> None:
    manifest = _load(RAYSERVICE)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")

    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)

    assert serve_config["applications"] == _load(SERVE_CONFIG)["applications"]
    assert schema.http_options.port == _load(SERVE_CONFIG)["http_options"]["port"]


def test_rayservice_cluster_has_cpu_and_gpu_worker_groups() -> None:
    manifest = _load(RAYSERVICE)
    cluster = manifest["spec"]["rayClusterConfig"]
    derived = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "raypipe", "namespace": "default"}, "spec": cluster}
    )
    types = derived["available_node_types"]
    head = types[derived["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != derived["head_node_type"]}

    assert cluster["rayVersion"] == importlib.metadata.version("ray")
    assert head["resources"]["CPU"] == 0
    assert sorted(w["resources"].get("GPU", 0) > 0 for w in workers.values()) == [False, True]
    for worker in workers.values():
        assert worker["min_workers"] <= worker["max_workers"]
        assert (worker["min_workers"] == 0) == (worker["resources"].get("GPU", 0) > 0)


def test_rayservice_reads_the_database_url_from_a_secret_everywhere() -> None:
    cluster = _load(RAYSERVICE)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    containers = [c for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]

    for container in containers:
        env = {item["name"]: item for item in container["env"]}
        assert "secretKeyRef" in env["RAYPIPE_DATABASE_URL"]["valueFrom"], container["name"]
        assert env["RAYPIPE_ARTIFACTS_URL"]["value"].startswith("s3://")
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["initContainers"][0]["command"] == ["raypipe", "migrate"]
    started = head["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][-1]
    assert started.endswith("raypipe up --no-api")
