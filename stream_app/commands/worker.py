"""`linewatch worker`: run an inspection worker (scale out by starting more; partitions are the unit)."""

from __future__ import annotations

from typing import Annotated

import typer

from stream_app.scoring.fleet import run


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        ctx: typer.Context,
        loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning")] = "info",
        device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA if available)")] = None,
        processes: Annotated[
            int | None,
            typer.Option(min=1, help="inference processes (default: settings worker_processes, else one per core)"),
        ] = None,
    ) -> None:
        """Consume sensor vectors and camera frames, score them in micro-batches, publish verdicts and alerts."""
        settings = ctx.obj
        if device:
            settings.device = device
        raise typer.Exit(run(settings, processes, loglevel))
