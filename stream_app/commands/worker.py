"""`linewatch worker`: run an inspection worker (scale out by starting more; partitions are the unit).

Several workers on one host need nothing extra: each takes the first free metrics port from `metrics_port`.
"""

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
        metrics_port: Annotated[
            int | None,
            typer.Option(help="first port for /metrics and /health (next free one if taken; 0: any; -1: none)"),
        ] = None,
        metrics_host: Annotated[str | None, typer.Option(help="address /metrics and /health bind (127.0.0.1)")] = None,
    ) -> None:
        """Consume sensor vectors and camera frames, score them in micro-batches, publish verdicts and alerts."""
        settings = ctx.obj
        if device:
            settings.device = device
        if metrics_port is not None:
            settings.metrics_port = metrics_port
        if metrics_host is not None:
            settings.metrics_host = metrics_host
        raise typer.Exit(run(settings, processes, loglevel))
