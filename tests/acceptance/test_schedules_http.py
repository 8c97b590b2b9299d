"""Schedules over real HTTP: create, read, pause, resume, edit and delete, with located
errors, tenant isolation and admin-only job types."""

from __future__ import annotations

import uuid

from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)


def test_a_schedule_is_managed_over_http(api: Api) -> None:
    with api.client(api.key(f"c-{uuid.uuid4().hex[:8]}")) as http:
        body = {
            "name": "hourly-embed",
            "cron": "5 * * * *",
            "timezone": "Europe/Paris",
            "job": {"type": "noop", "payload": {}},
        }
        created = http.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert schedule["enabled"] is True and schedule["next_fire_at"].endswith(":05:00Z")
        assert schedule["missed"] == "run_once"
        again = http.post("/v1/schedules", json=body)
        assert again.status_code == 409
        listed = http.get("/v1/schedules").json()["schedules"]
        assert [s["id"] for s in listed] == [schedule["id"]]
        paused = http.post(f"/v1/schedules/{schedule['id']}/pause").json()
        assert paused["enabled"] is False and paused["next_fire_at"] is None
        resumed = http.post(f"/v1/schedules/{schedule['id']}/resume").json()
        assert resumed["enabled"] is True and resumed["next_fire_at"] is not None
        edited = http.patch(f"/v1/schedules/{schedule['id']}", json={"cron": "@daily"}).json()
        assert edited["next_fire_at"].endswith(("T22:00:00Z", "T23:00:00Z"))  # Paris midnight
        with api.client(api.key("stranger")) as stranger:
            assert stranger.get(f"/v1/schedules/{schedule['id']}").status_code == 404
            assert stranger.delete(f"/v1/schedules/{schedule['id']}").status_code == 404
        assert http.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
        assert http.get(f"/v1/schedules/{schedule['id']}").status_code == 404


def test_bad_schedules_are_refused_with_located_errors(api: Api) -> None:
    with api.client(api.key(f"e-{uuid.uuid4().hex[:8]}")) as http:
        bad = http.post(
            "/v1/schedules",
            json={
                "name": "x",
                "cron": "61 * * * *",
                "timezone": "Mars/Olympus",
                "job": {"type": "nope"},
            },
        )
        assert bad.status_code == 422
        locs = {tuple(d["loc"][:2]) for d in bad.json()["error"]["details"]}
        assert {("cron",), ("timezone",)} <= locs and ("job", "type") in locs
        six_fields = http.post(
            "/v1/schedules", json={"name": "y", "cron": "0 0 * * * *", "job": {"type": "noop"}}
        )
        assert six_fields.status_code == 422
        maintenance = http.post(
            "/v1/schedules",
            json={"name": "z", "cron": "0 3 * * *", "job": {"type": "maintenance.prune"}},
        )
        assert maintenance.status_code == 422
        assert "only admin API keys" in maintenance.json()["error"]["message"]
        assert http.get("/v1/schedules").json()["schedules"] == []
        # Nor through an edit: a tenant's PATCH to an admin-only type is refused, unchanged.
        own = http.post(
            "/v1/schedules", json={"name": "own", "cron": "0 3 * * *", "job": {"type": "noop"}}
        ).json()
        edit = http.patch(f"/v1/schedules/{own['id']}", json={"job": {"type": "maintenance.prune"}})
        assert edit.status_code == 422, edit.text
        assert "only admin API keys" in edit.json()["error"]["message"]
        assert http.get(f"/v1/schedules/{own['id']}").json()["job"]["type"] == "noop"
