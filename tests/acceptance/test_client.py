"""Acceptance: ``raypipe.Client`` and ``raypipe.AsyncClient`` against the API on Serve, over HTTP.

Every test gets a tenant of its own, so listings see only its jobs. The last section
needs no server: error answers and retries against a scripted transport.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from raypipe import AsyncClient, Client, JobStatus
from raypipe.batches import BatchStatus
from raypipe.client import API_KEY_ENV, URL_ENV, SpecLike, default_client
from raypipe.exceptions import (
    Conflict,
    InvalidInput,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
)
from raypipe.jobs import AttemptStatus
from tests.conftest import free_port
from tests.helpers.processors import Repeated, Word, repeat
from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)

WAIT_S = 60
#: Keeps the retry tests fast: pauses of 10, 20, 40 ms.
FAST_S = 0.01


@pytest.fixture
def key(api: Api) -> str:
    return api.key(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def client(api: Api, key: str) -> Iterator[Client]:
    with Client(api.url, api_key=key) as client:
        yield client


class Scripted(httpx.BaseTransport):
    """Sends requests on to ``real`` (or answers 404), after the faults it is given, one per
    request in order: ``refuse`` (never sent), ``lose`` (sent, answer lost), ``503``."""

    def __init__(self, *faults: str, real: httpx.BaseTransport | None = None):
        self.faults = list(faults)
        self.real = real
        self.sent: list[tuple[str, str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.pop(0) if self.faults else None
        if fault == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        self.sent.append((request.method, request.url.path, request.headers.get("idempotency-key")))
        if fault == "503":
            return httpx.Response(503, text="no healthy upstream")
        if self.real is None:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "nope"}})
        response = self.real.handle_request(request)
        if fault == "lose":
            response.read()
            response.close()
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    def close(self) -> None:
        if self.real is not None:
            self.real.close()


# -- following jobs -----------------------------------------------------------------------


def test_stream_follows_a_job_to_its_end(client: Client) -> None:
    job = client.submit("sleep", {"seconds": 1, "steps": 4})

    events = list(client.stream(job.id))

    assert events[-1]["event"] == "status"
    assert events[-1]["status"] == "completed"
    assert all(e["id"] == job.id for e in events)
    ids = [e["event_id"] for e in events]
    assert ids == sorted(set(ids))
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 2, events
    assert progress == sorted(progress)
    assert 0 < progress[0] < progress[-1] <= 100
    assert job.status() is JobStatus.COMPLETED
    assert job.progress() == 100
    assert job.result(timeout=WAIT_S) == {"slept": 1.0}
    # Resuming after an event replays exactly what came after it.
    assert list(client.stream(job.id, last_event_id=ids[1])) == events[2:]


def test_result_of_a_noop(client: Client) -> None:
    job = client.submit("noop", tags=["smoke"], priority=7)

    assert job.result(timeout=WAIT_S) == {}
    record = client.get(job.id).refresh()
    assert (record.status, record.tags, record.priority) == (JobStatus.COMPLETED, ["smoke"], 7)
    assert client.wait(job.id, timeout=WAIT_S).finished_at is not None


def test_a_permanent_error_fails_the_job_and_retry_runs_it_again(client: Client) -> None:
    job = client.submit("fail", {"error": "PermanentError", "message": "bad input"})

    with pytest.raises(JobFailed, match="PermanentError: bad input") as caught:
        job.result(timeout=WAIT_S)

    assert caught.value.job.status is JobStatus.FAILED
    [attempt] = job.attempts()
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None and attempt.error.type == "PermanentError"
    assert job.retry().status is JobStatus.QUEUED
    assert job.wait(timeout=WAIT_S).status is JobStatus.FAILED
    assert [a.attempt for a in client.attempts(job.id)] == [1, 2]


def test_wait_times_out_and_cancel_stops_the_job(client: Client) -> None:
    job = client.submit("sleep", {"seconds": 60, "steps": 600})

    with pytest.raises(TimeoutError, match=job.id):
        job.wait(timeout=0.2)
    job.cancel()

    assert job.wait(timeout=WAIT_S).status is JobStatus.CANCELLED
    with pytest.raises(JobFailed, match="cancelled"):
        job.result(timeout=WAIT_S)


# -- errors -------------------------------------------------------------------------------


def test_an_unknown_type_is_invalid_and_names_the_known_ones(client: Client) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.submit("no.such.type", {})

    assert "unknown job type 'no.such.type'" in caught.value.message
    assert "noop" in caught.value.message and "sleep" in caught.value.message
    assert caught.value.details[0]["loc"] == ["type"]


def test_a_bad_payload_is_invalid_and_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidInput, match=r"^payload\.seconds: ") as caught:
        client.submit("sleep", {"seconds": -1})

    assert caught.value.details[0]["loc"] == ["payload", "seconds"]
    assert caught.value.code == "validation_error"


def test_unknown_ids_are_not_found(client: Client) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound, match=missing):
        client.get(missing)
    with pytest.raises(NotFound):
        next(client.stream(missing))
    with pytest.raises(NotFound):
        client.cancel("../../health")


def test_cancelling_or_retrying_a_completed_job_conflicts(client: Client) -> None:
    job = client.submit("noop")
    job.wait(timeout=WAIT_S)

    with pytest.raises(Conflict, match="is completed"):
        job.cancel()
    with pytest.raises(Conflict, match="is completed"):
        client.retry(job.id)


def test_keys_come_from_the_environment_and_bad_ones_are_refused(
    api: Api, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, key)
    with Client(api.url) as client:
        assert client.submit("noop").result(timeout=WAIT_S) == {}

    with Client(api.url, api_key="rp_not_a_key") as client, pytest.raises(Unauthorized):
        client.submit("noop")

    monkeypatch.delenv(API_KEY_ENV)
    with Client(api.url) as client, pytest.raises(Unauthorized, match=API_KEY_ENV):
        list(client.list())


# -- many jobs ----------------------------------------------------------------------------


def test_submit_many_then_list_every_job_once_across_pages(api: Api, key: str) -> None:
    scripted = Scripted(real=httpx.HTTPTransport())
    with Client(api.url, api_key=key, transport=scripted) as client:
        tagged: SpecLike = {"type": "sleep", "payload": {"seconds": 0}, "tags": ["t"]}
        specs: list[SpecLike] = [*[("noop", {})] * 4, tagged]
        handles = client.submit_many(specs)
        scripted.sent.clear()

        listed = list(client.list(limit=2))
        pages = len(scripted.sent)
        only_tagged = list(client.list(tag="t"))

    assert sorted(job.id for job in listed) == sorted(h.id for h in handles)
    assert len(listed) == 5
    assert pages == 3
    assert [job.type for job in only_tagged] == ["sleep"]


def test_a_bulk_with_one_bad_spec_writes_nothing(client: Client) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.submit_many([("noop", {}), ("sleep", {"seconds": "soon"})])

    assert caught.value.details[0]["loc"] == ["jobs", 1, "payload", "seconds"]
    assert list(client.list()) == []


def test_the_same_idempotency_key_gives_the_same_job(client: Client) -> None:
    first = client.submit("noop", idempotency_key="nightly-1")
    again = client.submit("noop", idempotency_key="nightly-1")

    assert again.id == first.id
    with pytest.raises(Conflict, match="nightly-1"):
        client.submit("sleep", {"seconds": 0}, idempotency_key="nightly-1")
    assert [job.id for job in client.list()] == [first.id]


def test_the_same_idempotency_key_gives_the_same_batch(client: Client) -> None:
    specs = [("noop", {}), ("noop", {})]
    first = client.submit_batch(specs, idempotency_key="nightly-batch")
    again = client.submit_batch(specs, idempotency_key="nightly-batch")

    assert again.id == first.id
    with pytest.raises(Conflict, match="nightly-batch"):
        client.submit_batch([("noop", {})], idempotency_key="nightly-batch")
    # One batch of two jobs was made, whatever was sent.
    assert sorted(job.id for job in client.list()) == sorted(
        job.id for job in client.batch_jobs(first.id)
    )
    assert len(list(client.list())) == 2


# -- connection errors --------------------------------------------------------------------


def test_an_unreachable_server_raises_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, api_key="k", retries=2, backoff_s=FAST_S) as client:
        with pytest.raises(Unreachable, match="tried 3 times") as caught:
            client.submit("noop")
        with pytest.raises(Unreachable):
            client.get("x")

    assert url in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_lost_answer_to_a_submission_is_retried_without_a_second_job(api: Api, key: str) -> None:
    scripted = Scripted("refuse", "lose", real=httpx.HTTPTransport())
    with Client(api.url, api_key=key, transport=scripted, backoff_s=FAST_S) as client:
        job = client.submit("noop")

        (_, path, first_key), (_, _, second_key) = scripted.sent
        assert path == "/v1/jobs"
        assert first_key and first_key == second_key
        assert [j.id for j in client.list()] == [job.id]


def test_a_bulk_submission_that_may_have_arrived_is_not_sent_again(api: Api, key: str) -> None:
    scripted = Scripted("refuse", "lose", real=httpx.HTTPTransport())
    with Client(api.url, api_key=key, transport=scripted, backoff_s=FAST_S) as client:
        with pytest.raises(Unreachable, match="ReadTimeout"):
            client.submit_many([("noop", {}), ("noop", {})])

        assert len(scripted.sent) == 1
        assert len(list(client.list())) == 2


def test_reads_are_retried_after_a_503(api: Api, key: str) -> None:
    scripted = Scripted("503", "503", real=httpx.HTTPTransport())
    with Client(api.url, api_key=key, transport=scripted, backoff_s=FAST_S) as client:
        assert list(client.list()) == []

    assert len(scripted.sent) == 3


# -- asyncio ------------------------------------------------------------------------------


def test_async_client_submits_streams_and_waits(api: Api, key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api.url, api_key=key) as client:
            job = await client.submit("sleep", {"seconds": 0.5, "steps": 2})
            assert (await job.wait(timeout=WAIT_S, progress=True)).status is JobStatus.COMPLETED
            events = [event async for event in client.stream(job.id)]
            assert "progress" in [e["event"] for e in events]
            assert events[-1]["status"] == "completed"
            assert await job.result() == {"slept": 0.5}
            assert await job.progress() == 100

            noop, failing = await client.submit_many(
                [("noop", {}), ("fail", {"error": "PermanentError"})]
            )
            assert await noop.result(timeout=WAIT_S) == {}
            with pytest.raises(JobFailed, match="PermanentError"):
                await failing.result(timeout=WAIT_S)
            assert len(await failing.attempts()) == 1
            listed = [j.id async for j in client.list(limit=2)]
            assert sorted(listed) == sorted([job.id, noop.id, failing.id])

            slow = await client.submit("sleep", {"seconds": 60, "steps": 600})
            with pytest.raises(TimeoutError):
                await slow.wait(timeout=0.2)
            await slow.cancel()
            assert await slow.status() in (JobStatus.PROCESSING, JobStatus.CANCELLED)
            assert (await client.wait(slow.id, timeout=WAIT_S)).status is JobStatus.CANCELLED
            with pytest.raises(NotFound):
                await client.get(str(uuid.uuid4()))

    asyncio.run(scenario())


def test_async_client_follows_retries_and_cancels_batches(api: Api, key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api.url, api_key=key) as client:
            specs: list[SpecLike] = [("noop", {}), ("fail", {"error": "PermanentError"})]
            batch = await client.submit_batch(specs, tags=["async"])
            final = await batch.wait(timeout=WAIT_S, progress=True)
            assert final.status is BatchStatus.COMPLETED_WITH_FAILURES
            assert (final.counts["completed"], final.counts["failed"]) == (1, 1)
            assert final.tags == ["async"]
            jobs = [job async for job in batch.jobs()]
            assert [(job.batch_index, job.type) for job in jobs] == [(0, "noop"), (1, "fail")]
            failed = [job.id async for job in client.batch_jobs(batch.id, status="failed")]
            assert failed == [jobs[1].id]
            assert [job.id async for job in batch.jobs(JobStatus.COMPLETED)] == [jobs[0].id]

            again = await batch.retry_failed()
            assert again.status is BatchStatus.RUNNING
            assert (await client.wait_batch(batch.id, timeout=WAIT_S)).counts["failed"] == 1
            assert len(await client.attempts(jobs[1].id)) == 2
            assert (await client.retry_failed(batch.id)).status is BatchStatus.RUNNING
            assert (await batch.wait(timeout=WAIT_S)).status is final.status

            slow = await client.submit_batch([("sleep", {"seconds": 60, "steps": 600})] * 2)
            with pytest.raises(TimeoutError, match=slow.id):
                await slow.wait(timeout=0.2)
            assert (await client.cancel_batch(slow.id)).cancel_requested
            assert (await slow.wait(timeout=WAIT_S)).status is BatchStatus.CANCELLED
            assert (await client.get_batch(slow.id)).id == slow.id
            with pytest.raises(Conflict):
                await slow.cancel()
            with pytest.raises(NotFound):
                await client.get_batch(str(uuid.uuid4()))

    asyncio.run(scenario())


# -- no server: error answers and arguments -----------------------------------------------


def _answering(
    status: int, json: object = None, text: str | None = None, headers: dict[str, str] | None = None
) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(status, json=json, text=text, headers=headers)
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInput), (413, PayloadTooLarge), (500, ServerError), (503, ServerError)],
)
def test_error_answers_become_typed_exceptions(status: int, error: type[Exception]) -> None:
    body = {"error": {"code": "x_code", "message": "what went wrong", "details": [{"loc": []}]}}
    transport = _answering(status, json=body)
    with Client(transport=transport, backoff_s=FAST_S) as client, pytest.raises(error) as caught:
        client.get("j")

    assert str(caught.value) == "what went wrong"
    assert caught.value.code == "x_code"  # type: ignore[attr-defined]
    assert caught.value.details == [{"loc": []}]  # type: ignore[attr-defined]


def test_rate_limited_carries_retry_after() -> None:
    body = {"error": {"code": "rate_limited", "message": "slow down", "details": []}}
    transport = _answering(429, json=body, headers={"Retry-After": "7"})
    with Client(transport=transport) as client, pytest.raises(RateLimited) as caught:
        client.submit("noop")

    assert caught.value.retry_after_s == 7


def test_a_non_json_error_keeps_the_status_and_text() -> None:
    client = Client(transport=_answering(502, text="Bad gateway"), backoff_s=FAST_S)
    with client, pytest.raises(ServerError) as caught:
        client.get("j")

    assert caught.value.message == (
        "HTTP 502 Bad Gateway: Bad gateway (not the API's answer: something in front of it)"
    )


def test_serves_plain_500_is_named_as_a_replica_that_stopped() -> None:
    # What Ray Serve's proxy answers when the replica dies mid-request (it has no hook to
    # answer in the API's shape): the message says what it means for the request.
    client = Client(transport=_answering(500, text="Internal Server Error"), retries=0)
    with client, pytest.raises(ServerError) as caught:
        client.submit("noop")

    assert caught.value.message == (
        "HTTP 500 Internal Server Error: Internal Server Error (not the API's answer: Ray"
        " Serve's proxy answers so when the API's replica stops mid-request; the request"
        " may or may not have taken effect)"
    )


def test_bad_arguments_fail_before_sending() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("localhost:8000")
    with Client(transport=Scripted()) as client, pytest.raises(TypeError, match="prio"):
        client.submit("noop", prio=1)  # type: ignore[call-arg]


# -- logs -------------------------------------------------------------------------------


def test_logs_are_followed_while_the_job_runs_and_read_afterwards(
    client: Client, api: Api, tmp_path: Path
) -> None:
    job = client.submit("test.chatty", {"lines": 2, "folder": str(tmp_path)})
    following = client.follow_logs(job.id)
    first_two = [next(following)["message"], next(following)["message"]]
    assert first_two == ["attempt 1 line 0 ", "attempt 1 line 1 "]
    assert job.refresh().status is JobStatus.PROCESSING  # streamed while it runs
    (tmp_path / "release").write_text("1")
    rest = list(following)  # ends once the job has ended and its last lines are read
    assert [(line["message"], line["level"], line["seq"]) for line in rest] == [
        ("attempt 1 released", "WARNING", 3)
    ]
    assert job.wait(timeout=WAIT_S).status is JobStatus.COMPLETED
    logs = client.logs(job.id)
    assert (logs["attempt"], logs["dropped"], len(logs["lines"])) == (1, 0, 3)
    assert [line["seq"] for line in client.logs(job.id, after=2)["lines"]] == [3]

    async def through_asyncio() -> list[str]:
        async with AsyncClient(api.url, api_key=client.api_key) as aclient:
            return [line["message"] async for line in aclient.follow_logs(job.id, attempt=1)]

    assert asyncio.run(through_asyncio()) == [line["message"] for line in logs["lines"]]
    with pytest.raises(NotFound, match="has no attempt 2"):
        client.logs(job.id, attempt=2)
    with Client(api.url, api_key=api.key("someone-else")) as other, pytest.raises(NotFound):
        other.logs(job.id)


# -- typed submission ---------------------------------------------------------------------


def test_a_typed_processor_submits_over_http_and_rebuilds_its_result(
    api: Api, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = Scripted(real=httpx.HTTPTransport())
    with Client(api.url, api_key=key, transport=scripted) as client:
        job = repeat.submit(Word(text="ab", times=3), client=client, priority=3)
        assert job.result(timeout=WAIT_S) == Repeated(text="ababab", length=6)
        assert job.refresh().priority == 3
        by_fields = repeat.submit(text="xyz", client=client).result(timeout=WAIT_S)
        assert isinstance(by_fields, Repeated) and by_fields.length == 3
        batch = repeat.map([Word(text="a"), {"text": "b", "times": 2}], client=client)
        assert batch.results(timeout=WAIT_S) == [
            Repeated(text="a", length=1),
            Repeated(text="bb", length=2),
        ]
        sent = len(scripted.sent)
        with pytest.raises(InvalidInput, match="times") as caught:
            repeat.submit(text="a", times=11, client=client)
        assert caught.value.details[0]["loc"] == ["payload", "times"]
        with pytest.raises(InvalidInput, match=r"jobs\.1\.payload\.text"):
            repeat.map([Word(text="a"), {"text": ""}], client=client)
        assert len(scripted.sent) == sent  # refused here: nothing was sent
    # Without a client: the one from RAYPIPE_URL and RAYPIPE_API_KEY.
    monkeypatch.setenv(URL_ENV, api.url)
    monkeypatch.setenv(API_KEY_ENV, key)
    default_client.cache_clear()
    try:
        assert repeat.submit(text="q").result(timeout=WAIT_S).text == "q"
    finally:
        default_client().close()
        default_client.cache_clear()


def test_a_typed_processor_submits_through_the_asyncio_client(api: Api, key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api.url, api_key=key) as client:
            job = await repeat.asubmit(text="cd", times=2, client=client, tags=["typed"])
            assert await job.result(timeout=WAIT_S) == Repeated(text="cdcd", length=4)
            assert (await job.refresh()).tags == ["typed"]
            batch = await repeat.amap([Word(text="e"), {"text": "f", "times": 3}], client=client)
            assert await batch.results(timeout=WAIT_S) == [
                Repeated(text="e", length=1),
                Repeated(text="fff", length=3),
            ]
            with pytest.raises(InvalidInput, match=r"payload\.times"):
                await repeat.asubmit(Word(text="a"), times=0, client=client)

    asyncio.run(scenario())


def test_clients_take_pydantic_payloads(client: Client) -> None:
    assert client.submit("test.repeat", Word(text="p", times=2)).result(timeout=WAIT_S) == {
        "text": "pp",
        "length": 2,
    }
    [handle] = client.submit_many([("test.repeat", Word(text="m"))])
    assert handle.result(timeout=WAIT_S)["text"] == "m"
