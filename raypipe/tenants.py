"""Tenant names: they become folder names (artifacts) and labels, so they are plain names."""

from __future__ import annotations

import re

from raypipe.exceptions import InvalidInput

#: Letters, digits, '.', '_' and '-', starting with a letter or digit, no "..".
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name; :class:`InvalidInput` naming the rule otherwise."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant) or ".." in tenant:
        raise InvalidInput(
            f"tenant {tenant!r}: use letters, digits, '.', '_' and '-' only, starting with a"
            " letter or digit, no '..', at most 100 characters",
            details=[{"loc": ["tenant"], "msg": "not a valid tenant name"}],
        )
    return tenant
