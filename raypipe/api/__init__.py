"""The HTTP API: a FastAPI app that validates, writes rows and reads state, served by Ray Serve."""

from raypipe.api.app import create_app

__all__ = ["create_app"]
