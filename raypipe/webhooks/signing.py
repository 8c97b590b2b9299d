"""Webhook signatures after the Standard Webhooks scheme (https://www.standardwebhooks.com).

``webhook-signature`` is ``v1,`` + base64 of HMAC-SHA256 over
``{webhook-id}.{webhook-timestamp}.{body}``, keyed with the tenant's secret (``whsec_`` +
base64). The ``standardwebhooks`` package does the cryptography on both sides, so what
raypipe signs is what any Standard Webhooks library verifies.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import standardwebhooks.webhooks as standard

from raypipe.exceptions import RaypipeError

SECRET_PREFIX = "whsec_"
USER_AGENT = "raypipe-webhooks/1"


class WebhookVerificationError(RaypipeError):
    """The webhook's signature does not verify: reject the request."""

    code = "webhook_verification_failed"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def headers(secret: str, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """The headers that carry ``body``'s signature at ``now`` (whole seconds, as signed)."""
    at = datetime.fromtimestamp(int(now.timestamp()), timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": standard.Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """The parsed event if ``headers`` sign ``body`` with ``secret`` within five minutes of
    now; otherwise :class:`WebhookVerificationError`. Pass the body exactly as received."""
    try:
        return standard.Webhook(secret).verify(body, dict(headers.items()))
    except (standard.WebhookVerificationError, standard.EmptyWebhookSecretError) as exc:
        raise WebhookVerificationError(f"webhook rejected: {exc}") from None
    except ValueError as exc:  # malformed secret, signature header, encoding or JSON
        raise WebhookVerificationError(f"webhook rejected: malformed input ({exc})") from None
