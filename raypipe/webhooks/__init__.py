"""Signed webhooks: raypipe POSTs terminal events; receivers check them with :func:`verify`."""

from raypipe.webhooks.signing import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
