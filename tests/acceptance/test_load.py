"""The load run of ``bench/load.py`` as a test: 10,000 jobs over HTTP from 20 clients."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from tests.conftest import ROOT
from tests.helpers.serving import Api, module_api

sys.path.insert(0, str(ROOT / "bench"))
import load

JOBS = 10_000
CLIENTS = 20
#: Jobs per POST. One per POST takes ~3 minutes here (the single Serve replica on two
#: cores is the limit, as bench/load.py measures); bulk requests keep the same 20
#: concurrent clients, cancels and failures within the test suite's time budget.
PER_REQUEST = 25


#: The API on PostgreSQL only: the production database, and the run is long.
api = module_api("load", "postgres", rate_limits={})


@pytest.mark.postgres
def test_ten_thousand_jobs_from_twenty_clients_lose_nothing(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    wanted = load.plan(JOBS)
    run = load.drive(
        api.url,
        api.settings.database_url,
        api.key("load"),
        wanted,
        CLIENTS,
        PER_REQUEST,
        timeout_s=900,
    )
    assert Counter(wanted) == {"completed": 8_000, "failed": 1_000, "cancelled": 1_000}
    assert load.problems(api.settings.database_url, Counter(wanted), run.ids) == []
    with capsys.disabled():  # the figures belong in the test log
        print("\n" + load.table([load.row("postgres", wanted, run)], CLIENTS, PER_REQUEST).text())
