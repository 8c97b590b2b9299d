"""raypipe's metrics, scraped from Ray's own Prometheus endpoint after real jobs ran, and the
shipped Grafana dashboard checked against the metrics that exist."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from raypipe import metrics
from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus, utcnow
from tests.conftest import POSTGRES_ONLY, ROOT, make_settings, wait_for
from tests.helpers.webhook_receiver import receiver

DASHBOARD = ROOT / "deploy" / "grafana" / "raypipe.json"
#: Ray exports every few seconds; a generous bound for a loaded machine.
EXPORT_TIMEOUT_S = 90.0

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def queue() -> str:
    """A queue only this test uses: series of earlier tests' dispatchers cannot mix in."""
    return f"metrics-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(db_url: str, tmp_path: Path, queue: str) -> Settings:
    return make_settings(
        db_url,
        tmp_path / "data",
        queues={queue: {"concurrency": 10}},
        # The webhook receiver listens on loopback, refused by default.
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_poll_interval_s=0.05,
    )


def scrape() -> Series:
    """Every sample on this node's metrics endpoint, summed over the processes that export it."""
    [node] = [n for n in ray.nodes() if n["Alive"]]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    series: Series = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in ("WorkerId", "le")}
            if "le" in sample.labels:
                labels["le"] = str(float(sample.labels["le"]))
            key = (sample.name, frozenset(labels.items()))
            series[key] = series.get(key, 0.0) + sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels``; None if there are none."""
    wanted = set(labels.items())
    found = [v for (n, tags), v in series.items() if n == name and wanted <= tags]
    return sum(found) if found else None


def scraped(name: str, at_least: float = 0.0, **labels: str) -> Series:
    """Wait until Ray exports ``name`` with ``labels`` at ``at_least`` or more."""

    def ready() -> Series | None:
        series = scrape()
        found = value(series, name, **labels)
        return series if found is not None and found >= at_least else None

    return cast(Series, wait_for(ready, EXPORT_TIMEOUT_S, f"{name}{labels} >= {at_least}"))


# The metrics are counted after the database write, whichever the database: one kind.
@pytest.mark.parametrize("db_url", POSTGRES_ONLY, indirect=True)
def test_jobs_show_up_on_rays_metrics_endpoint(
    raypipe: DirectClient, queue: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    in_q = {"queue": queue}
    with receiver() as hook:
        held = raypipe.submit("test.gate", {"folder": str(gate)}, **in_q)
        done = raypipe.submit_many(
            [
                *({"type": "noop", "payload": {}, **in_q} for _ in range(4)),
                {"type": "sleep", "payload": {"seconds": 0.2, "steps": 4}, **in_q},
                {"type": "fail", "payload": {"error": "PermanentError"}, **in_q},
                {
                    "type": "fail",
                    "payload": {"error": "RetryableError", "succeed_on_attempt": 2},
                    **in_q,
                },
                {"type": "noop", "payload": {}, "webhook_url": hook.url, **in_q},
            ]
        )
        raypipe.submit("noop", {}, delay_s=3600, **in_q)  # stays queued: depth >= 1
        # The gate holds its attempt until the exported gauge has seen it in flight, and
        # for over a second from its start (durations count from the worker's start).
        scraped("ray_raypipe_jobs_in_flight", 1, queue=queue)
        wait_for(
            lambda: (
                (started := held.refresh().started_at) is not None
                and utcnow() - started > timedelta(seconds=1.2)
            ),
            what="the gate to have run for over a second",
        )
        (gate / "release").write_text("1")
        ends = [job.wait(timeout=60).status for job in [held, *done]]
        hook.wait_for(1)
    assert ends.count(JobStatus.COMPLETED) == 8 and ends.count(JobStatus.FAILED) == 1

    series = scraped("ray_raypipe_jobs_finished_total", 9, queue=queue)
    series = scraped("ray_raypipe_webhook_deliveries_total", 1, event="job.completed")
    assert value(series, "ray_raypipe_jobs_finished_total", queue=queue, status="completed") == 8
    assert (
        value(series, "ray_raypipe_jobs_finished_total", queue=queue, type="fail", status="failed")
        == 1
    )
    assert value(series, "ray_raypipe_jobs_started_total", queue=queue) == 9
    assert value(series, "ray_raypipe_job_retries_total", queue=queue, type="fail") == 1
    # Ten attempts ran; the gate's was held for seconds, the retried one ended as such.
    duration = "ray_raypipe_attempt_duration_seconds"
    assert value(series, f"{duration}_count", queue=queue) == 10
    assert value(series, f"{duration}_count", queue=queue, status="retried") == 1
    gate_tags = {"queue": queue, "type": "test.gate"}
    assert value(series, f"{duration}_bucket", le="1.0", **gate_tags) == 0
    assert value(series, f"{duration}_bucket", le="inf", **gate_tags) == 1
    assert value(series, "ray_raypipe_webhook_deliveries_total", outcome="delivered")
    assert value(series, "ray_raypipe_progress_backlog") is not None
    assert value(series, "ray_raypipe_queue_oldest_waiting_seconds", queue=queue) is not None

    # The gauges settle: only the delayed job is left, waiting, and nothing runs.
    scraped("ray_raypipe_queue_depth", 1, queue=queue)
    wait_for(
        lambda: value(scrape(), "ray_raypipe_jobs_in_flight", queue=queue) == 0,
        EXPORT_TIMEOUT_S,
        "the in-flight gauge back at zero",
    )


def exported_names() -> set[str]:
    """The names Ray exports for raypipe's metrics (counters end in _total, histograms have
    buckets, a sum and a count)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        f"ray_{name}{suffix}"
        for name, spec in metrics.SPECS.items()
        for suffix in suffixes[spec.kind]
    }


def test_the_grafana_dashboard_graphs_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    exprs = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    assert exprs and all(target.get("datasource") for p in panels for target in p["targets"])
    used = {name for expr in exprs for name in re.findall(r"\bray_raypipe_\w+", expr)}
    assert used <= exported_names(), used - exported_names()
    unused = [name for name in metrics.SPECS if not any(u.startswith(f"ray_{name}") for u in used)]
    assert not unused, f"no panel shows {unused}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
