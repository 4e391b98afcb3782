"""`linewatch worker`: run an inspection worker (scale out by starting more; partitions are the unit)."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        ctx: typer.Context,
        loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning")] = "info",
        device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA if available)")] = None,
    ) -> None:
        """Consume sensor vectors and camera frames, score them in micro-batches, publish verdicts and alerts."""
        from stream_app.scoring.worker import run_worker

        settings = ctx.obj
        if device:
            settings.device = device
        run_worker(settings, loglevel=loglevel)
