"""Ray Serve entry point: `serve run serve_app:app`, or `serve build serve_app:app` for a
config file to `serve deploy` on a cluster. Settings come from RAYPIPE_* variables."""

from __future__ import annotations

from raypipe.api.deployment import build
from raypipe.config import get_settings

app = build(get_settings())
