"""What a tenant (non-admin) API key may ask of a job, beyond a valid spec: admin keys act
for every tenant, a tenant's key only for its own share. Pure rules, checked by every path
that turns a spec into a row (:mod:`raypipe.submission`)."""

from __future__ import annotations

from raypipe.config import Settings
from raypipe.exceptions import Forbidden, InvalidInput
from raypipe.registry import ProcessorSpec


def check_type(processor: ProcessorSpec, admin: bool) -> None:
    """Job types that act on every tenant (maintenance) are for admin keys: a 422 at ``type``."""
    if processor.admin_only and not admin:
        problem = f"only admin API keys may submit {processor.type} jobs"
        raise InvalidInput(f"type: {problem}", details=[{"loc": ["type"], "msg": problem}])


def check_queue(queue: str, settings: Settings, admin: bool) -> None:
    """An admin-only queue (``maintenance``) is an operator's lane: a tenant's job there
    would hold its few slots from the work it exists for. A 403 at ``queue``."""
    if settings.queues[queue].admin_only and not admin:
        problem = f"only admin API keys may submit to the {queue!r} queue (admin-only)"
        raise Forbidden(f"queue: {problem}", details=[{"loc": ["queue"], "msg": problem}])


def check_priority(priority: int | None, settings: Settings, admin: bool) -> None:
    """A tenant's priority stays within ``tenant_priority_min``..``tenant_priority_max``:
    past it, one tenant's jobs would go before every other tenant's. A 422 at ``priority``
    naming the range. Unset (the queue's default, the operator's choice) is not checked."""
    low, high = settings.limits.tenant_priority_min, settings.limits.tenant_priority_max
    if priority is None or admin or low <= priority <= high:
        return
    problem = (
        f"must be between {low} and {high} for a tenant API key"
        " (RAYPIPE_TENANT_PRIORITY_MIN/MAX); admin keys may go beyond"
    )
    raise InvalidInput(f"priority: {problem}", details=[{"loc": ["priority"], "msg": problem}])
