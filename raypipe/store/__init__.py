"""Persistence: tables, migrations and the queries that move jobs between statuses."""

from raypipe.store.dispatch import Candidate, DispatchStore
from raypipe.store.engine import create_engine
from raypipe.store.jobs import JobStore

__all__ = ["Candidate", "DispatchStore", "JobStore", "create_engine"]
