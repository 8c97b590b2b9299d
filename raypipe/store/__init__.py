"""Persistence: tables, migrations and the queries that move jobs between statuses."""

from raypipe.store.engine import create_engine
from raypipe.store.repository import Candidate, JobStore

__all__ = ["Candidate", "JobStore", "create_engine"]
