"""embed.texts on the embeddings pool: real model, real Ray, checked against ``encode``."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from raypipe.direct import DirectClient
from raypipe.embedding.models import EmbeddingModel, load_cached
from raypipe.jobs import JobStatus
from tests.conftest import DB_KINDS
from tests.integration.conftest import dispatcher, pool_actors, system_fixture

MODEL = "all-MiniLM-L6-v2"


#: One raypipe (and one warm model pool) for the module.
system = system_fixture(
    "embeddings",
    DB_KINDS,
    # Small chunks, so a 320-text job is several; one batch of 128 holds ten 10-text
    # requests, so merging is seen as one model call of one forward pass.
    embedding_chunk_size=128,
    embedding_batch_size=128,
    embedding_max_wait_ms=300,
)


def served(system: DirectClient) -> int:
    """Texts the pool's actors have encoded so far."""
    infos = [ray.get(a.info.remote()) for a in pool_actors(system.settings, "embeddings")]
    return sum(info["models"].get(MODEL, {}).get("texts", 0) for info in infos)


@pytest.fixture(scope="module")
def reference(system: DirectClient) -> EmbeddingModel:
    """The same model, loaded in this process: what ``encode`` says the vectors are."""
    return load_cached(system.settings.embeddings, MODEL)


SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by eight percent.",
    "The company's sales rose this quarter.",
    "Photosynthesis turns sunlight into chemical energy.",
]


def test_vectors_equal_the_models_own_encode_in_input_order(
    system: DirectClient, reference: EmbeddingModel
) -> None:
    texts = [f"{SENTENCES[i % 5]} (item {i % 70})" for i in range(200)]  # 70 unique, repeated
    before = served(system)
    handle = system.submit("embed.texts", {"texts": texts})
    job = handle.wait(timeout=180)
    assert served(system) - before == 70  # identical texts reach the model once
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result == {
        "count": 200,
        "unique": 70,
        "dim": 384,
        "model": MODEL,
        "backend": reference.backend,  # the library's own name for how it ran the model
        "normalized": True,
        "artifact": "embeddings.npy",
    }
    vectors = handle.artifact("embeddings.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (200, 384)
    expected = reference.encode(texts, normalize=True).vectors
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert job.stage == "save"


def test_similar_sentences_score_closer_than_unrelated(system: DirectClient) -> None:
    handle = system.submit("embed.texts", {"texts": SENTENCES})
    assert handle.wait(timeout=180).status is JobStatus.COMPLETED
    v = handle.artifact("embeddings.npy")
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 4]
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 4]


def test_unnormalised_vectors_match_encode_without_normalising(
    system: DirectClient, reference: EmbeddingModel
) -> None:
    handle = system.submit("embed.texts", {"texts": SENTENCES, "normalize": False})
    assert handle.wait(timeout=180).status is JobStatus.COMPLETED
    expected = reference.encode(SENTENCES, normalize=False).vectors
    np.testing.assert_allclose(handle.artifact("embeddings.npy"), expected, atol=1e-4)


def test_a_large_job_is_chunked_with_progress(system: DirectClient) -> None:
    before = served(system)
    texts = [f"sentence number {i} about topic {i % 13}" for i in range(320)]  # 3 chunks
    handle = system.submit("embed.texts", {"texts": texts})
    assert handle.wait(timeout=180).status is JobStatus.COMPLETED
    assert served(system) - before == 320
    steps = [e for e in system.store.events(handle.id) if e["kind"] == "progress"]
    assert any(e["stage"] == "encode" and 0 < e["progress"] < 100 for e in steps)


def test_concurrent_requests_are_merged_into_one_model_batch(system: DirectClient) -> None:
    assert system.submit("embed.texts", {"texts": SENTENCES}).wait(timeout=180).status is (
        JobStatus.COMPLETED
    )  # the pool has a warm actor now
    actor = pool_actors(system.settings, "embeddings")[0]
    before = ray.get(actor.info.remote())["models"][MODEL]
    texts = [[f"job {j} text {t}" for t in range(10)] for j in range(10)]
    results = ray.get([actor.embed.remote(batch, MODEL, True) for batch in texts])
    after = ray.get(actor.info.remote())["models"][MODEL]
    assert [(r.vectors.shape, r.model) for r in results] == [((10, 384), MODEL)] * 10
    assert after["requests"] - before.get("requests", 0) == 10
    assert after["batches"] - before.get("batches", 0) == 1  # ten requests, one batch
    assert after["forward_passes"] - before.get("forward_passes", 0) == 1


def test_the_text_artifact_of_another_job_can_be_embedded(
    system: DirectClient, reference: EmbeddingModel
) -> None:
    lines = "\n".join(SENTENCES[:3]) + "\n\n"
    source = system.submit("test.echo", {"artifacts": {"lines.txt": lines}})
    assert source.wait(timeout=120).status is JobStatus.COMPLETED
    handle = system.submit("embed.texts", {"texts_artifact": f"{source.id}/lines.txt"})
    job = handle.wait(timeout=180)
    assert job.status is JobStatus.COMPLETED and job.result["count"] == 3
    np.testing.assert_allclose(
        handle.artifact("embeddings.npy"), reference.encode(SENTENCES[:3]).vectors, atol=1e-5
    )


def test_the_pool_is_what_its_settings_say(system: DirectClient) -> None:
    assert system.submit("embed.texts", {"texts": SENTENCES}).wait(timeout=180).status is (
        JobStatus.COMPLETED
    )
    pool = ray.get(dispatcher(system.settings).info.remote())["pools"]["embeddings"]
    assert pool["per_actor"] == "1 CPU" and 1 <= pool["size"] <= 2
    info = ray.get(pool_actors(system.settings, "embeddings")[0].info.remote())
    assert (info["models"][MODEL]["dim"], info["models"][MODEL]["device"]) == (384, "cpu")
