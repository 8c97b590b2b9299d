"""Names of raypipe's detached actors (looked up in the namespace from the settings)."""

DISPATCHER_ACTOR = "raypipe-dispatcher"
PROGRESS_ACTOR = "raypipe-progress"
WEBHOOK_ACTOR = "raypipe-webhooks"
