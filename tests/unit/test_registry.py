"""The processor registry: registration, lookup, loading and Ray options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from raypipe import registry
from raypipe.config import get_settings
from raypipe.context import JobContext
from raypipe.exceptions import InvalidInput
from raypipe.processors.basic import FailPayload, NoopPayload, SleepPayload
from raypipe.registry import ProcessorSpec, processor
from raypipe.retry import RetryPolicy


class TextPayload(BaseModel):
    text: str


class OtherPayload(BaseModel):
    n: int = 0


def annotated(payload: TextPayload, ctx: JobContext) -> str:
    """Upper-cases text.

    More detail here.
    """
    return payload.text.upper()


def unannotated(payload, ctx):  # type: ignore[no-untyped-def]
    return None


def dict_annotated(payload: dict[str, Any], ctx: JobContext) -> None:
    return None


def no_parameters() -> None:
    return None


def first_impl(payload: TextPayload, ctx: JobContext) -> None:
    return None


def second_impl(payload: TextPayload, ctx: JobContext) -> None:
    return None


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test works on a copy of the registry (built-ins loaded) that is thrown away."""
    registry.load()
    builtins = {
        name: spec
        for name, spec in registry._registry.items()
        if spec.fn.__module__ in {b.module for b in registry.BUILTINS}
    }
    monkeypatch.setattr(registry, "_registry", builtins)
    yield


# -- registration -----------------------------------------------------------------------


def test_decorator_infers_payload_model_from_annotation() -> None:
    returned = processor("unit-upper")(annotated)
    spec = registry.get("unit-upper")
    assert returned.spec is spec and returned.fn is annotated
    assert returned.__doc__ == annotated.__doc__ and returned.__name__ == "annotated"
    assert spec.type == "unit-upper"
    assert spec.fn is annotated
    assert spec.payload_model is TextPayload
    assert spec.description == "Upper-cases text.\n\nMore detail here."


def test_decorator_records_options() -> None:
    policy = RetryPolicy(max_attempts=5)
    processor(
        "unit-opts",
        queue="gpu",
        num_cpus=2,
        num_gpus=0.5,
        memory=1024,
        resources={"accel": 1.0},
        retry=policy,
        timeout_s=30.0,
    )(annotated)
    spec = registry.get("unit-opts")
    assert spec.queue == "gpu"
    assert (spec.num_cpus, spec.num_gpus, spec.memory) == (2, 0.5, 1024)
    assert spec.resources == {"accel": 1.0}
    assert spec.retry is policy
    assert spec.timeout_s == 30.0


def test_memory_from_the_settings_is_worked_out_where_jobs_are_dispatched() -> None:
    processor("unit-bounded", memory=lambda settings: settings.mesh.memory_bytes)(annotated)
    spec = registry.get("unit-bounded")
    assert spec.memory is None and spec.configured(get_settings()).memory == 1 << 30
    configured = spec.configured(get_settings(mesh_memory_bytes=3 << 28))
    assert configured.ray_options()["memory"] == 3 << 28
    assert configured.demand()["memory"] == float(3 << 28)
    fixed = ProcessorSpec(type="t", fn=annotated, payload_model=TextPayload, memory=512)
    assert fixed.configured(get_settings(mesh_memory_bytes=1)) is fixed


def test_decorator_defaults() -> None:
    processor("unit-defaults")(annotated)
    spec = registry.get("unit-defaults")
    assert spec.queue is None
    assert (spec.num_cpus, spec.num_gpus, spec.memory) == (1.0, 0.0, None)
    assert spec.resources == {}
    assert spec.retry is None
    assert spec.timeout_s is None


def test_resources_are_copied() -> None:
    resources = {"accel": 1.0}
    processor("unit-copy", resources=resources)(annotated)
    resources["accel"] = 99.0
    assert registry.get("unit-copy").resources == {"accel": 1.0}


def test_explicit_payload_model_wins_over_annotation() -> None:
    processor("unit-explicit", payload=OtherPayload)(annotated)
    assert registry.get("unit-explicit").payload_model is OtherPayload


def test_explicit_payload_model_allows_unannotated_function() -> None:
    processor("unit-unannotated", payload=OtherPayload)(unannotated)
    assert registry.get("unit-unannotated").payload_model is OtherPayload


@pytest.mark.parametrize("fn", [unannotated, dict_annotated, no_parameters])
def test_rejects_function_without_pydantic_first_parameter(fn: Any) -> None:
    with pytest.raises(TypeError, match="pydantic model") as info:
        processor("unit-bad")(fn)
    assert fn.__qualname__ in str(info.value)
    with pytest.raises(InvalidInput):
        registry.get("unit-bad")  # nothing was registered


def test_reregistering_a_type_with_another_function_fails() -> None:
    processor("unit-dup")(first_impl)
    with pytest.raises(ValueError, match="already registered") as info:
        processor("unit-dup")(second_impl)
    assert "first_impl" in str(info.value)
    assert registry.get("unit-dup").fn is first_impl  # the first one stays


def test_builtin_type_cannot_be_taken_over() -> None:
    with pytest.raises(ValueError, match="'noop'"):
        processor("noop")(annotated)
    assert registry.get("noop").payload_model is NoopPayload


def test_reregistering_the_same_function_replaces_it() -> None:
    # Re-importing a module (notebooks, reloads) registers the same function again.
    processor("unit-same", num_cpus=1)(annotated)
    processor("unit-same", num_cpus=3)(annotated)
    assert registry.get("unit-same").num_cpus == 3


# -- lookup and loading -----------------------------------------------------------------


def test_builtins_are_registered() -> None:
    known = registry.load()
    assert {"noop", "sleep", "fail"} <= set(known)
    assert known["noop"].payload_model is NoopPayload
    assert known["sleep"].payload_model is SleepPayload
    assert known["fail"].payload_model is FailPayload
    assert all(known[name].num_cpus == 1 for name in ("noop", "sleep", "fail"))


def test_load_returns_a_copy() -> None:
    known = registry.load()
    known.pop("noop")
    assert registry.get("noop").type == "noop"


def test_get_unknown_type_lists_known_types() -> None:
    processor("unit-zeta")(annotated)
    with pytest.raises(InvalidInput) as info:
        registry.get("missing-type")
    error = info.value
    known = ", ".join(sorted(registry.load()))
    assert "unit-zeta" in known and "noop" in known
    assert error.message == f"type: unknown job type 'missing-type' (known: {known})"
    assert error.details == [
        {"loc": ["type"], "msg": f"unknown job type 'missing-type'; known: {known}"}
    ]


def test_get_with_empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registry", {})
    with pytest.raises(InvalidInput, match=r"known: none"):
        registry.get("noop")


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "raypipe_unit_user_procs"
    (tmp_path / f"{name}.py").write_text(
        "from pydantic import BaseModel\n"
        "from raypipe import processor\n\n"
        "class P(BaseModel):\n"
        "    x: int\n\n"
        "@processor('unit-from-module', queue='user')\n"
        "def run(payload: P, ctx):\n"
        "    return {'x': payload.x}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_imports_configured_modules(user_module: str) -> None:
    known = registry.load([user_module])
    spec = known["unit-from-module"]
    assert spec.queue == "user"
    assert spec.payload_model.model_validate({"x": "3"}).x == 3  # type: ignore[attr-defined]
    assert "noop" in known
    # loading again is harmless: the same function registers again
    assert "unit-from-module" in registry.load([user_module])


def test_load_missing_module_fails() -> None:
    with pytest.raises(ModuleNotFoundError):
        registry.load(["raypipe_no_such_module_anywhere"])


# -- ProcessorSpec ----------------------------------------------------------------------


def spec(**kwargs: Any) -> ProcessorSpec:
    return ProcessorSpec(type="t", fn=annotated, payload_model=TextPayload, **kwargs)


def test_ray_options_defaults() -> None:
    assert spec().ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_ray_options_with_memory_and_resources() -> None:
    options = spec(num_cpus=2, num_gpus=1, memory=2**30, resources={"accel": 2.0}).ray_options()
    assert options == {
        "num_cpus": 2,
        "num_gpus": 1,
        "memory": 2**30,
        "resources": {"accel": 2.0},
    }


def test_ray_options_resources_are_a_copy() -> None:
    s = spec(resources={"accel": 2.0})
    s.ray_options()["resources"]["accel"] = 0.0
    assert s.resources == {"accel": 2.0}


def test_demand_defaults_to_one_cpu() -> None:
    assert spec().demand() == {"CPU": 1.0}


def test_demand_lists_every_resource_held() -> None:
    demand = spec(num_cpus=0.5, num_gpus=1, memory=512, resources={"accel": 2.0}).demand()
    assert demand == {"CPU": 0.5, "GPU": 1, "accel": 2.0, "memory": 512.0}
    assert isinstance(demand["memory"], float)


def test_demand_drops_zero_amounts() -> None:
    assert spec(num_cpus=0, num_gpus=0, resources={"accel": 0.0}).demand() == {}
    assert spec(num_cpus=0, num_gpus=2).demand() == {"GPU": 2}


def test_a_result_annotation_that_cannot_be_resolved_is_read_as_json() -> None:
    def hidden(payload: TextPayload, ctx: object) -> NotImportedHere:  # noqa: F821
        return payload

    registered = processor("unit-hidden-result", payload=TextPayload)(hidden)
    assert registered.result_type is None and registry.get("unit-hidden-result").fn is hidden


def test_each_builtin_names_the_job_types_its_extra_brings() -> None:
    for builtin in registry.BUILTINS:
        assert builtin.installed(), builtin  # the tests install raypipe[all]
        made = {t for t, s in registry._registry.items() if s.fn.__module__ == builtin.module}
        if builtin.packages:
            assert set(builtin.types) == made, builtin.module
    assert registry.not_installed() == {}
