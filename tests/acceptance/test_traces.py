"""Acceptance: one trace from ``POST /v1/jobs`` to the processor's outbound request, across
the API, dispatcher and worker processes of a `raypipe up` head whose environment asks
for traces (the standard ``OTEL_*`` variables), collected by an OTLP receiver here."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, wait_for
from tests.helpers.commands import Raypipe, running_head
from tests.helpers.otlp import FILE, Collector, Span, collector

CLIENT_SPAN_KIND = 3  # OTLP's SPAN_KIND_CLIENT
SERVER_SPAN_KIND = 2


@pytest.fixture(scope="module")
def traced_head(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Raypipe, Collector, int]]:
    with collector() as (found, port):
        yield from (
            (cli, found, port)
            for cli in running_head(
                tmp_path_factory.mktemp("traces"),
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                OTEL_BSP_SCHEDULE_DELAY="200",  # export within 0.2 s (default 5 s)
                OTEL_SERVICE_NAME="raypipe-test",
                # The test's processor, fetching from the collector on this machine, and
                # the job's webhook, delivered to it.
                RAYPIPE_PROCESSOR_MODULES='["tests.helpers.processors"]',
                RAYPIPE_FETCH_ALLOW_NETWORKS='["127.0.0.1/32"]',
                RAYPIPE_WEBHOOK_ALLOW_NETWORKS='["127.0.0.1/32"]',
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            )
        )


def test_one_trace_runs_from_the_request_to_the_processors_fetch(
    traced_head: tuple[Raypipe, Collector, int],
) -> None:
    cli, found, port = traced_head
    key = (cli.data_dir / "api-key").read_text().strip()
    trace_id, root_span = secrets.token_hex(16), secrets.token_hex(8)
    api = f"http://127.0.0.1:{cli.env['RAYPIPE_API_PORT']}"
    answer = httpx.post(
        f"{api}/v1/jobs",
        json={
            "type": "test.traced",
            "payload": {"url": f"http://127.0.0.1:{port}/file"},
            "webhook_url": f"http://127.0.0.1:{port}/hook",
        },
        headers={
            "authorization": f"Bearer {key}",
            "traceparent": f"00-{trace_id}-{root_span}-01",
        },
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["trace_id"] == trace_id

    def completed() -> bool:
        shown = httpx.get(
            f"{api}/v1/jobs/{job['id']}", headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        return shown.json()["status"] == "completed"

    wait_for(completed, what="the traced job to complete")
    fetch_name = f"GET http://127.0.0.1:{port}/file"

    def chain_to_the_caller() -> list[Span] | None:
        """The spans from the fetch up its parents, once they reach the caller's span."""
        spans = {span.span_id: span for span in found.of_trace(trace_id)}
        chain = [span for span in spans.values() if span.name == fetch_name][:1]
        while chain and chain[-1].parent_id in spans:
            chain.append(spans[chain[-1].parent_id])
        return chain if chain and chain[-1].parent_id == root_span else None

    # Each process exports its spans on its own, in batches: wait for every link.
    chain = wait_for(chain_to_the_caller, what="the trace from the fetch to the caller")
    assert isinstance(chain, list)
    fetch = chain[0]
    assert [span.name for span in chain] == [
        fetch_name,
        "the processor's work",
        "attempt test.traced",
        "claim test.traced",
        "fastapi.endpoint",  # FastAPI's own spans, on the tracer raypipe sets up
        "POST /v1/jobs",
    ]
    assert fetch.kind == CLIENT_SPAN_KIND and chain[-1].kind == SERVER_SPAN_KIND
    request, claim, attempt = chain[-1], chain[3], chain[2]
    # The fetch carried the trace to the server it asked.
    assert f"00-{trace_id}-{fetch.span_id}-01" in found.fetches
    # Three processes: the API's replica, the dispatcher, the worker.
    pids = {span.resource["process.pid"] for span in (request, claim, attempt)}
    assert len(pids) == 3, pids
    assert {span.resource["service.name"] for span in chain} == {"raypipe-test"}
    assert attempt.attributes["raypipe.job_id"] == job["id"]
    assert attempt.attributes["raypipe.attempt"] == 1
    # The job's webhook, sent by the webhook sender, continues the job's trace from the
    # request that submitted it, and carries it to the receiver.
    hook_name = f"POST http://127.0.0.1:{port}/hook"

    def webhook_spans() -> tuple[Span, Span] | None:
        spans = {span.name: span for span in found.of_trace(trace_id)}
        if hook_name in spans and "webhook job.completed" in spans:
            return spans["webhook job.completed"], spans[hook_name]
        return None

    found_hook = wait_for(webhook_spans, what="the webhook's spans")
    assert isinstance(found_hook, tuple)
    sending, posting = found_hook
    assert sending.parent_id == chain[-2].span_id  # the endpoint that submitted the job
    assert posting.parent_id == sending.span_id and posting.kind == CLIENT_SPAN_KIND
    assert f"00-{trace_id}-{posting.span_id}-01" in found.hooks
    shown = json.loads(cli.ok("show", job["id"], "--json").stdout)
    assert (shown["trace_id"], shown["result"]) == (trace_id, {"bytes": len(FILE)})
