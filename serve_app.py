"""Ray Serve entry point (`serve run serve_app:app`).

The HTTP API (routes under /v1, auth, streams) arrives with the HTTP issue; until
then this module only builds the settings it will deploy with, so that it imports.
"""

from __future__ import annotations

from raypipe.config import get_settings

settings = get_settings()
app = None  # replaced by the Serve application in the HTTP issue
