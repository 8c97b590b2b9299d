"""Webhook signatures follow Standard Webhooks: checked here against the spec itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

import raypipe.webhooks
from raypipe.exceptions import RaypipeError
from raypipe.webhooks import signing
from raypipe.webhooks.signing import WebhookVerificationError, headers, new_secret, verify

BODY = json.dumps({"type": "job.completed", "timestamp": "2025-01-01T00:00:00Z", "data": {}})
MSG_ID = "msg_0123456789abcdef0123456789abcdef"


def now() -> datetime:
    return datetime.now(timezone.utc)


def spec_signature(secret: str, msg_id: str, timestamp: str, body: str) -> str:
    """The signature as the Standard Webhooks spec defines it, without any library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_secrets_are_32_random_bytes_in_the_whsec_format() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32


def test_headers_carry_the_spec_signature() -> None:
    secret, at = new_secret(), now()
    sent = headers(secret, MSG_ID, BODY, at)
    assert sent["webhook-id"] == MSG_ID
    assert sent["webhook-timestamp"] == str(int(at.timestamp()))
    assert sent["webhook-signature"] == spec_signature(
        secret, MSG_ID, sent["webhook-timestamp"], BODY
    )
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"] == "raypipe-webhooks/1"


def test_a_signed_body_verifies_and_is_parsed() -> None:
    secret = new_secret()
    sent = headers(secret, MSG_ID, BODY, now())
    assert verify(BODY.encode(), sent, secret) == json.loads(BODY)
    # Header names are case-insensitive, as they are on the wire.
    assert verify(BODY, {k.title(): v for k, v in sent.items()}, secret) == json.loads(BODY)


def test_a_signature_made_by_the_spec_verifies() -> None:
    """A receiver's side: raypipe accepts what any Standard Webhooks sender would send."""
    secret = new_secret()
    stamp = str(int(now().timestamp()))
    sent = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": stamp,
        # Several signatures (say, during a key rotation on the sender's side): one must match.
        "webhook-signature": "v1,bm90IGl0 " + spec_signature(secret, MSG_ID, stamp, BODY),
    }
    assert verify(BODY, sent, secret)["type"] == "job.completed"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b, s: (h, b.replace("completed", "failed"), s), id="body"),
        pytest.param(
            lambda h, b, s: (
                {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)},
                b,
                s,
            ),
            id="timestamp",
        ),
        pytest.param(lambda h, b, s: ({**h, "webhook-id": "msg_other"}, b, s), id="id"),
        pytest.param(lambda h, b, s: (h, b, new_secret()), id="wrong-secret"),
        pytest.param(
            lambda h, b, s: ({k: v for k, v in h.items() if k != "webhook-signature"}, b, s),
            id="no-signature",
        ),
        pytest.param(lambda h, b, s: ({**h, "webhook-signature": "v1"}, b, s), id="malformed"),
        pytest.param(lambda h, b, s: (h, b, "whsec_%%%"), id="malformed-secret"),
        pytest.param(lambda h, b, s: (h, b"\xff\xfe", s), id="not-utf8"),
    ],
)
def test_anything_changed_is_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    sent, body, key = tamper(headers(secret, MSG_ID, BODY, now()), BODY, secret)
    with pytest.raises(WebhookVerificationError) as caught:
        verify(body, sent, key)
    assert isinstance(caught.value, RaypipeError)


@pytest.mark.parametrize("skew", [timedelta(minutes=-10), timedelta(minutes=10)])
def test_a_correct_signature_outside_five_minutes_is_rejected(skew: timedelta) -> None:
    """Replays of a captured request stop working once its timestamp is old."""
    secret = new_secret()
    sent = headers(secret, MSG_ID, BODY, now() + skew)
    assert sent["webhook-signature"] == spec_signature(
        secret, MSG_ID, sent["webhook-timestamp"], BODY
    )
    with pytest.raises(WebhookVerificationError, match=r"too (old|new)"):
        verify(BODY, sent, secret)


def test_verify_is_public() -> None:
    assert raypipe.webhooks.verify is signing.verify
    assert raypipe.webhooks.WebhookVerificationError is WebhookVerificationError
