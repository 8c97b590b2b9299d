"""The job page at ``GET /`` in a real headless Chromium (Playwright) against the API on Serve.

PostgreSQL only: the page is static and reaches the database only through the /v1 routes,
which every other acceptance module runs on both databases; a second deployment would
double this module's time for no new coverage.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Request, expect, sync_playwright

from tests.conftest import IN_CI, wait_for
from tests.helpers.serving import Api, deploy_api

CHROMIUM = Path("/usr/bin/chromium")
WAIT_S = 120


@pytest.fixture(scope="module", params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def api(
    request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    yield from deploy_api(request, request.param, tmp_path_factory.mktemp("page"), serve_port)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (Playwright's own browser download is not needed)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    expect.set_options(timeout=WAIT_S * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@dataclass
class Visit:
    """The page opened with a key, with every request it made and every script error."""

    page: Page
    key: str
    api: Api
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, api: Api, key: str) -> Visit:
        page = browser.new_context().new_page()
        page.set_default_timeout(WAIT_S * 1000)
        visit = cls(page, key, api)
        page.on("request", lambda request: visit.requests.append(request))
        page.on("pageerror", lambda error: visit.errors.append(str(error)))
        page.on("console", lambda m: m.type == "error" and visit.errors.append(m.text))
        page.goto(f"{api.url}/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Connect").click()
        return visit

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The API's answer to the same key, outside the page."""
        with self.api.client(self.key) as http:
            response = http.request(method, path, **kwargs)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def submit(self, job_type: str, payload: dict[str, Any]) -> str:
        """Submit over the API (the page has no form) and refresh the page's list."""
        job_id = self.call("POST", "/v1/jobs", json={"type": job_type, "payload": payload})["id"]
        self.refresh()
        return job_id

    def refresh(self) -> None:
        self.page.get_by_role("button", name="Refresh").click()

    def row(self, job_id: str) -> Locator:
        return self.page.locator(f'#jobs tr[data-job-id="{job_id}"]')

    def check(self) -> None:
        """No script failed, and the key went to the API in the Authorization header only,
        never into a URL."""
        assert self.errors == []
        api_calls = [r for r in self.requests if urlsplit(r.url).path.startswith("/v1/")]
        assert api_calls
        assert all(self.key not in r.url for r in self.requests)
        assert all(r.headers.get("authorization") == f"Bearer {self.key}" for r in api_calls)


@pytest.fixture
def visit(browser: Browser, api: Api) -> Iterator[Visit]:
    """The page with a new tenant's key, once it shows the queues."""
    visit = Visit.open(browser, api, api.key(f"page-{uuid.uuid4().hex[:8]}"))
    expect(visit.page.locator('#queues tr[data-queue="default"]')).to_be_visible()
    yield visit
    visit.page.context.close()


def test_the_page_is_static_and_the_api_still_needs_a_key(api: Api) -> None:
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    for asset in ("/ui/app.js", "/ui/style.css"):
        assert httpx.get(f"{api.url}{asset}").status_code == 200, asset
    assert httpx.get(f"{api.url}/ui/").status_code == 404  # no folder listing
    assert httpx.get(f"{api.url}/v1/jobs").status_code == 401
    assert "/" not in httpx.get(f"{api.url}/openapi.json").json()["paths"]


def test_a_wrong_key_is_refused_and_shows_nothing(browser: Browser, api: Api) -> None:
    visit = Visit.open(browser, api, "rp_not-a-real-key")
    expect(visit.page.get_by_role("status")).to_contain_text("The API refused this key")
    expect(visit.page.locator("#queues tr")).to_have_count(0)
    visit.page.context.close()


def test_queues_batches_and_a_jobs_progress_bar_go_live(visit: Visit) -> None:
    batch = visit.call("POST", "/v1/batches", json={"jobs": [{"type": "noop"}] * 2})
    job_id = visit.submit("sleep", {"seconds": 4, "steps": 2})
    row = visit.row(job_id)
    expect(row).to_have_count(1)
    progress = row.locator("progress")
    # The bar holds 50 for two seconds: seen between the ends, unless it never moves live.
    seen = visit.page.wait_for_function(
        """row => {
            const value = row.querySelector("progress").value;
            if (value > 0 && value < 100) return "between";
            return row.dataset.status === "completed" && "ended";
        }""",
        arg=row.element_handle(),
        polling="raf",
    )
    assert seen.json_value() == "between"
    expect(row).to_have_attribute("data-status", "completed")
    expect(row.locator(".status")).to_have_text("completed")
    assert progress.evaluate("bar => bar.value") == 100
    assert progress.get_attribute("aria-label") == f"Progress of job sleep {job_id[:8]}"
    assert any(r.url.endswith(f"/v1/jobs/{job_id}/events") for r in visit.requests)

    visit.refresh()
    batch_row = visit.page.locator(f'#batches tr[data-batch-id="{batch["id"]}"]')
    expect(batch_row).to_contain_text("2 of 2 done")
    expect(batch_row).to_have_attribute("data-status", "completed")
    expect(visit.page.locator('#queues tr[data-queue="default"]')).to_be_visible()
    visit.check()


def test_a_failed_job_shows_its_error_and_its_retry_button_runs_it_again(visit: Visit) -> None:
    payload = {"error": "PermanentError", "message": "bad input", "succeed_on_attempt": 2}
    job_id = visit.submit("fail", payload)
    row = visit.row(job_id)
    retry = row.get_by_role("button", name=f"Retry job fail {job_id[:8]}")
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.locator(".error")).to_have_text("PermanentError: bad input")
    assert visit.call("GET", f"/v1/jobs/{job_id}")["attempt"] == 1

    retry.click()

    def completed() -> dict[str, Any] | None:
        job = visit.call("GET", f"/v1/jobs/{job_id}", params={"include": "attempts"})
        return job if job["status"] == "completed" else None

    job = wait_for(completed, timeout=WAIT_S, what="the retried job to complete")
    assert [a["status"] for a in job["attempts"]] == ["failed", "completed"]
    expect(row).to_have_attribute("data-status", "completed")
    expect(row.locator(".error")).to_have_text("")
    expect(retry).to_be_hidden()
    expect(row.locator(".attempt")).to_have_text("2 of 3")
    visit.check()


def test_a_mesh_jobs_thumbnail_is_fetched_with_the_key(visit: Visit) -> None:
    png = io.BytesIO()
    Image.linear_gradient("L").resize((32, 24)).save(png, format="PNG")
    job_id = visit.submit(
        "mesh.from_image", {"image_b64": base64.b64encode(png.getvalue()).decode()}
    )
    thumbnail = visit.row(job_id).get_by_role("img", name=f"mesh from job {job_id[:8]}")
    expect(thumbnail).to_be_visible()
    visit.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle()
    )
    assert thumbnail.evaluate("img => img.naturalWidth") == 256
    assert thumbnail.get_attribute("src").startswith("blob:")
    assert any(r.url.endswith(f"/{job_id}/artifacts/thumbnail.png") for r in visit.requests)
    visit.check()


def test_the_key_is_remembered_until_forgotten(visit: Visit) -> None:
    job_id = visit.submit("noop", {})
    expect(visit.row(job_id)).to_have_count(1)
    visit.page.reload()
    expect(visit.page.get_by_label("API key")).to_have_value(visit.key)
    expect(visit.row(job_id)).to_have_count(1)
    visit.page.get_by_role("button", name="Forget key").click()
    expect(visit.page.locator("#jobs tr")).to_have_count(0)
    assert visit.page.evaluate("localStorage.length") == 0
    visit.page.reload()
    expect(visit.page.get_by_label("API key")).to_have_value("")
    expect(visit.page.locator("#jobs tr")).to_have_count(0)
    visit.check()


def test_an_admin_pauses_and_resumes_a_queue_and_a_tenant_key_is_told_it_may_not(
    browser: Browser, api: Api, visit: Visit
) -> None:
    # ``visit`` holds a tenant's key: the API refuses it, and the page says why.
    solo = visit.page.locator('#queues tr[data-queue="solo"]')
    solo.get_by_role("button", name="Pause").click()
    expect(visit.page.get_by_role("status")).to_contain_text("only an admin key may pause")
    expect(solo).to_have_attribute("data-paused", "false")

    admin = Visit.open(browser, api, api.key("ops", admin=True))
    row = admin.page.locator('#queues tr[data-queue="solo"]')
    try:
        row.get_by_role("button", name="Pause").click()
        expect(admin.page.get_by_role("status")).to_contain_text("Queue solo paused.")
        expect(row).to_have_attribute("data-paused", "true")
        assert {q["name"]: q["paused"] for q in admin.call("GET", "/v1/queues")}["solo"]
        row.get_by_role("button", name="Resume").click()
        expect(admin.page.get_by_role("status")).to_contain_text("Queue solo resumed.")
        expect(row).to_have_attribute("data-paused", "false")
        admin.check()
    finally:
        admin.call("POST", "/v1/queues/solo/resume")
        admin.page.context.close()
