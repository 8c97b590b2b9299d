"""The HTTP API on a real Ray Serve, over real HTTP, against SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import DB_KINDS
from tests.helpers.serving import LOOPBACK_WEBHOOKS, module_api

#: The API deployed on Serve for one test module, per database kind, its webhooks allowed
#: to reach the tests' receivers.
api = module_api("api", DB_KINDS, **LOOPBACK_WEBHOOKS)
