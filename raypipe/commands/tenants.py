"""``raypipe tenants …``: fair share's weights and each tenant's recent usage, and setting
a weight, on the database (the operator's; the dispatcher reads a new weight within
seconds)."""

from __future__ import annotations

from typing import Annotated

import typer

from raypipe.commands import JsonFlag, database, print_json
from raypipe.config import get_settings
from raypipe.runtime.bells import dispatcher_info
from raypipe.store.tenants import TenantStore

app = typer.Typer(
    help="Tenants: fair-share weights (what each gets while several wait) and recent usage.",
    no_args_is_help=True,
)


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """Each tenant with a weight (set, or from RAYPIPE_TENANT_WEIGHTS) or recent usage in
    resource-seconds (when a dispatcher of this configuration answers)."""
    settings = get_settings()
    info = dispatcher_info(settings) or {}
    usage = info.get("tenants") or {}
    with database(settings) as engine:
        weights = TenantStore(engine).weights(settings.tenants.weights)
    rows = [
        {
            "tenant": tenant,
            "weight": weights.get(tenant, 1.0),
            "usage_s": usage.get(tenant, {}).get("usage_s"),
        }
        for tenant in sorted(set(weights) | set(usage))
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        used = "unknown" if row["usage_s"] is None else f"{row['usage_s']:.1f} resource-s"
        typer.echo(f"{row['tenant']:<30} weight {row['weight']:<8g} {used}")


@app.command()
def weight(
    tenant: Annotated[str, typer.Argument(help="The tenant's name.")],
    value: Annotated[float, typer.Argument(help="Its weight, above 0 (default 1).")],
) -> None:
    """Set a tenant's fair-share weight: while several tenants wait, one of weight 3 gets
    about three times the resource-seconds of one of weight 1."""
    settings = get_settings()
    with database(settings) as engine:
        TenantStore(engine).set_weight(tenant, value)
    typer.echo(f"tenant {tenant}: weight {value:g}")
