"""``raypipe webhooks …``: deliveries, replays and signing secrets, through a deployment's
API (``--url``, as ``--key``'s tenant) or straight on the database."""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from typing import Annotated, Any

import typer

from raypipe.client import Client
from raypipe.commands import EXIT_USAGE, JsonFlag, KeyOption, UrlOption, database, fail, print_json
from raypipe.config import get_settings
from raypipe.store.webhooks import DeliveryStatus, WebhookStore
from raypipe.submission import DEFAULT_TENANT

app = typer.Typer(
    help="Webhooks: what was delivered, replays of failed deliveries, signing secrets.",
    no_args_is_help=True,
)

#: Deliveries read per request when listing over HTTP (the API's largest page).
PAGE = 1000


def _line(delivery: dict[str, Any]) -> str:
    code = delivery["last_status_code"]
    answer = delivery["last_error"] or (f"HTTP {code}" if code else "")
    about = delivery["job_id"] or delivery["batch_id"] or "-"
    created = datetime.fromisoformat(delivery["created_at"])
    return (
        f"{delivery['id']}  {delivery['status']:<10} {delivery['event']:<15} {about:<36}"
        f" tries {delivery['attempts']:<2} {created:%Y-%m-%d %H:%M:%S}  {answer}"
    ).rstrip()


@app.command()
def deliveries(
    status: Annotated[DeliveryStatus | None, typer.Option()] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's deliveries.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's deliveries.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List webhook deliveries, newest first."""
    if url:
        with Client(url, api_key=key) as client:
            value = status.value if status else None
            pages = client.deliveries(value, job, batch, limit=min(limit, PAGE))
            found = list(islice(pages, limit))
    else:
        with database(get_settings()) as engine:
            listed = WebhookStore(engine).list(
                status=status, job_id=job, batch_id=batch, limit=limit
            )
            found = [d.to_dict() for d in listed]
    if as_json:
        print_json(found)
        return
    for delivery in found:
        typer.echo(_line(delivery))


@app.command()
def replay(
    delivery_id: str, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Send a delivery again (same webhook-id); the running sender picks it up."""
    if url:
        with Client(url, api_key=key) as client:
            delivery = client.replay_delivery(delivery_id)
    else:
        with database(get_settings()) as engine:
            delivery = WebhookStore(engine).replay(delivery_id).to_dict()
    print_json(delivery) if as_json else typer.echo(f"{delivery['id']} pending again")


@app.command()
def secret(
    tenant: Annotated[
        str | None, typer.Option(help="Whose secret (default: 'default'; with --url, the key's).")
    ] = None,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it with a new one.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Print a tenant's signing secret (created on first use), or rotate it."""
    if url:
        if tenant is not None:
            fail("--tenant: over --url the secret is the key's tenant's", EXIT_USAGE)
        with Client(url, api_key=key) as client:
            typer.echo(client.webhook_secret(rotate))
        return
    with database(get_settings()) as engine:
        store = WebhookStore(engine)
        tenant = tenant or DEFAULT_TENANT
        typer.echo(store.rotate_secret(tenant) if rotate else store.secret(tenant))
