"""`linewatch simulate`: options for `sim.producer.run_simulation`, a progress bar and a summary table."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _summary_table(result: dict) -> Table:
    table = Table(title=f"simulated {result['elapsed_s']:.1f} s")
    for col in ("kind", "sent", "per s", "ground truth"):
        table.add_column(col)
    for kind in ("vectors", "frames"):
        truth = ", ".join(f"{k} {v}" for k, v in sorted(result["truth"][kind].items()))
        table.add_row(kind, str(result[kind]), f"{result[kind] / max(result['elapsed_s'], 1e-9):.1f}", truth)
    return table


def simulate(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option(min=1, help="production lines")] = 2,
    machines: Annotated[int, typer.Option(min=0, help="sensor machines per line")] = 2,
    cameras: Annotated[int, typer.Option(min=0, help="cameras per line")] = 1,
    rate: Annotated[float, typer.Option(min=0.0, help="sensor vectors per second, all machines together")] = 200.0,
    fps: Annotated[float, typer.Option(min=0.0, help="frames per second per camera")] = 2.0,
    duration: Annotated[float, typer.Option(min=0.0, help="seconds to run")] = 60.0,
    fault_rate: Annotated[float, typer.Option(min=0.0, max=0.4, help="fraction of faulty sensor events")] = 0.02,
    defect_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="fraction of frames with a defect")] = 0.1,
    drift: Annotated[float, typer.Option(help="operating-point drift, channel sigmas per 1000 events")] = 0.0,
    features: Annotated[int, typer.Option(min=2, help="channels per sensor vector")] = 8,
    image_size: Annotated[int, typer.Option(min=16, help="frame width and height in pixels")] = 64,
    seed: Annotated[int, typer.Option(help="same seed, same line (and same training data)")] = 0,
    encoding: Annotated[str, typer.Option(help="sensor vectors as 'json' or compact 'binary' (float32)")] = "json",
) -> None:
    """Simulate production lines: sensor vectors and camera frames with labelled faults, in real time."""
    from tqdm import tqdm

    from stream_app.sim.producer import run_simulation

    settings = ctx.obj
    bar = tqdm(total=0, unit="ev", desc="simulate", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    async def main() -> dict:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_simulation(
                settings, lines, machines, cameras, rate, fps, duration, fault_rate, defect_rate,
                drift, features, image_size, seed, encoding, stop_event=stop, on_progress=progress,
            )
        )  # fmt: skip
        try:
            return await asyncio.shield(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            stop.set()
            return await task

    try:
        result = asyncio.run(main())
    finally:
        bar.close()
    console.print(_summary_table(result))
    console.print(f"topics: {settings.topics.vectors}, {settings.topics.frames}")


def register(app: typer.Typer) -> None:
    """Add `simulate` to the root CLI."""
    app.command()(simulate)
