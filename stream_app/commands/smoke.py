"""`linewatch smoke`: push events through the real stack (Kafka produce -> consume -> Redis) and show rates.

A quick end-to-end check of a deployment's plumbing, with no models involved.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def smoke(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="events to push through")] = 10_000,
) -> None:
    """Send events through Kafka and count them per source in Redis; print the rates."""
    from stream_app.ops.smoke import run_smoke

    result = asyncio.run(run_smoke(ctx.obj, events))
    console.print(
        f"[green]ok[/] {result['events']} events: produced {result['produce_per_s']:,.0f}/s, "
        f"consumed+counted in Redis {result['consume_and_count_per_s']:,.0f}/s; per source {result['per_source']}"
    )


def register(app: typer.Typer) -> None:
    app.command()(smoke)
