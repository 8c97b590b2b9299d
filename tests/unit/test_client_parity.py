"""The blocking and the asyncio clients and handles offer the same methods, read from the
classes themselves, so that a method added to one cannot be forgotten in the other."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raypipe.client import AsyncClient, Client
from raypipe.handle import (
    AsyncBatchBackend,
    AsyncBatchHandle,
    AsyncJobBackend,
    AsyncJobHandle,
    BatchBackend,
    BatchHandle,
    JobBackend,
    JobHandle,
)

PAIRS = [(Client, AsyncClient), (JobHandle, AsyncJobHandle), (BatchHandle, AsyncBatchHandle)]
#: What each handle may call on its client, and the client that must offer it in public.
BACKENDS = [
    (JobBackend, Client),
    (BatchBackend, Client),
    (AsyncJobBackend, AsyncClient),
    (AsyncBatchBackend, AsyncClient),
]


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Each parameter's name, kind and default: what a caller sees, types aside."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def pair_id(pair: tuple[type, type]) -> str:
    return pair[1].__name__


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_both_have_the_same_public_methods(pair: tuple[type, type]) -> None:
    blocking, asyncio_ = pair

    assert sorted(public_methods(blocking)) == sorted(public_methods(asyncio_))


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_each_method_takes_the_same_parameters(pair: tuple[type, type]) -> None:
    blocking, asyncio_ = pair

    for name in [*public_methods(blocking), "__init__"]:
        twin, method = getattr(asyncio_, name), getattr(blocking, name)
        assert parameters(twin) == parameters(method), f"{asyncio_.__name__}.{name}"


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_the_asyncio_twin_is_awaited_or_iterated_with_async_for(pair: tuple[type, type]) -> None:
    blocking, asyncio_ = pair
    twins = public_methods(asyncio_)

    for name, method in public_methods(blocking).items():
        twin = twins[name]
        returns = str(inspect.signature(method).return_annotation)
        if returns.startswith("Iterator["):
            assert str(inspect.signature(twin).return_annotation) == f"Async{returns}", name
        else:
            assert inspect.iscoroutinefunction(twin), f"{asyncio_.__name__}.{name} is not async"


def test_clients_are_context_managers_of_their_kind() -> None:
    assert hasattr(Client, "__enter__") and hasattr(Client, "__exit__")
    assert hasattr(AsyncClient, "__aenter__") and hasattr(AsyncClient, "__aexit__")


@pytest.mark.parametrize(
    ("backend", "client"), BACKENDS, ids=lambda c: c.__name__ if isinstance(c, type) else ""
)
def test_what_handles_need_is_public_on_the_clients(backend: type, client: type) -> None:
    offered = public_methods(client)

    for name, method in public_methods(backend).items():
        assert name in offered, f"{client.__name__} lacks {name}"
        assert parameters(offered[name]) == parameters(method), f"{client.__name__}.{name}"


def test_handles_call_nothing_private_on_their_client() -> None:
    import raypipe.handle

    tree = ast.parse(Path(raypipe.handle.__file__).read_text())
    private = sorted(
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_backend"
        and node.attr.startswith("_")
    )

    assert private == []
