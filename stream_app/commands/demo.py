"""`linewatch demo`: the product end to end on this machine, scored against injected faults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        ctx: typer.Context,
        duration: Annotated[float, typer.Option(help="seconds of simulated traffic")] = 60.0,
        rate: Annotated[float, typer.Option(help="sensor vectors per second, all machines")] = 100.0,
        fps: Annotated[float, typer.Option(help="frames per second per camera")] = 1.0,
        out: Annotated[Path, typer.Option(help="where the registry, logs, summary and PNG go")] = Path("demo-output"),
        keep_stack: Annotated[bool, typer.Option(help="leave Kafka and Redis running afterwards")] = False,
    ) -> None:
        """Stack up, fit models, run a worker + retraining agent + simulator, print precision/recall, write a PNG."""
        import logging

        from stream_app.sim.demo import DemoPlan, demo_main

        logging.basicConfig(level=logging.WARNING)
        plan = DemoPlan(duration_s=duration, rate=rate, fps=fps)
        result = demo_main(ctx.obj, out.resolve(), plan, keep_stack=keep_stack)
        if result["missing_verdicts"] > 0:
            typer.echo(f"{result['missing_verdicts']} events got no verdict in time", err=True)
            raise typer.Exit(1)
