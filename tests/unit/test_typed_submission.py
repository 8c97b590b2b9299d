"""Typed submission as a type checker sees it: ``@processor`` keeps the payload and result
types, so ``submit``/``map``/``result`` are checked (mypy runs on a small example), and
what a processor returns is what its handles read back."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api as mypy

from raypipe import registry
from tests.conftest import MYPY_CACHE, ROOT
from tests.helpers.processors import Repeated, gate, repeat

EXAMPLE = """
from pydantic import BaseModel

from raypipe import AsyncClient, Client, JobContext, processor
from raypipe.handle import AsyncBatchHandle, AsyncJobHandle, BatchHandle, JobHandle


class Resize(BaseModel):
    path: str
    width: int


class Resized(BaseModel):
    path: str
    width: int


@processor("images.resize")
def resize(payload: Resize, ctx: JobContext) -> Resized:
    return Resized(path=payload.path, width=payload.width)


client = Client("http://127.0.0.1:8000", api_key="rp_x")
job: JobHandle[Resized] = resize.submit(Resize(path="a.png", width=64), client=client)
done: Resized = job.result(timeout=60)
batch: BatchHandle[Resized] = resize.map([Resize(path="b.png", width=8)], client=client)
every: list[Resized] = batch.results()
called: Resized = resize(Resize(path="c.png", width=1), None)


async def through_asyncio(aclient: AsyncClient) -> list[Resized]:
    ajob: AsyncJobHandle[Resized] = await resize.asubmit(width=8, path="d.png", client=aclient)
    first: Resized = await ajob.result(timeout=60)
    again = Resize(path=first.path, width=first.width)
    abatch: AsyncBatchHandle[Resized] = await resize.amap([again], client=aclient)
    return await abatch.results()
"""

MISTAKES = """
wrong: int = resize.submit(Resize(path="a.png", width=64), client=client).result()
resize.submit(42, client=client)
"""


def _check(code: str, tmp_path: Path) -> tuple[str, int]:
    example = tmp_path / "example.py"
    example.write_text(textwrap.dedent(code))
    out, err, status = mypy.run(
        [
            str(example),
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            f"{MYPY_CACHE}",
        ]
    )
    return out + err, status


def test_a_type_checker_sees_the_payload_and_result_types(tmp_path: Path) -> None:
    report, status = _check(EXAMPLE, tmp_path)
    assert status == 0, report


def test_a_type_checker_refuses_a_wrong_payload_or_result(tmp_path: Path) -> None:
    report, status = _check(EXAMPLE + MISTAKES, tmp_path)
    assert status == 1, report
    assert 'expression has type "Resized", variable has type "int"' in report
    assert 'Argument 1 to "submit" of "Processor" has incompatible type "int"' in report


def test_the_result_type_comes_from_the_return_annotation() -> None:
    assert repeat.result_type is Repeated
    assert gate.result_type is None  # dict[str, int]: read back as JSON
    assert repeat.spec is registry.get("test.repeat")


def test_submit_takes_every_client_option_by_name() -> None:
    """Processor.submit reads the options it passes on by SubmitOptions' keys."""
    from inspect import Parameter, signature

    from raypipe.client import SubmitOptions

    for method in (registry.Processor.submit, registry.Processor.asubmit):
        named = {
            name
            for name, p in signature(method).parameters.items()
            if p.kind is Parameter.KEYWORD_ONLY and name != "client"
        }
        assert named == SubmitOptions.__optional_keys__, method.__name__
