"""`linewatch alerts tail`: options for `alerts.tail`, printed with rich or as JSON lines.

With `--json`, one alert JSON object per line for scripts; otherwise one readable line per alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True, highlight=False)
alerts_app = typer.Typer(help="Watch alerts from the pipeline.", no_args_is_help=True)


def _print_json_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@alerts_app.command("tail")
def tail_command(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--source", help="fnmatch pattern on the alert source, e.g. 'line-1/*'")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="one alert JSON object per line")] = False,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest retained alert")
    ] = False,
    group: Annotated[str | None, typer.Option(help="consumer group (share alerts, resume where it left off)")] = None,
    max_alerts: Annotated[int | None, typer.Option("--max", min=1, help="exit after this many alerts")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(min=0.0, help="exit when no alert arrives for this many seconds")
    ] = None,
) -> None:
    """Show alerts live: incidents opening and closing, score vs threshold, top sensors or heatmap peak."""
    settings = ctx.obj
    if not as_json:
        console.print(f"[dim]alerts on {escape(settings.topics.alerts)} matching {escape(source)} (Ctrl-C to stop)[/]")
    with contextlib.suppress(KeyboardInterrupt):
        from stream_app.alerts.tail import tail

        emit = _print_json_line if as_json else console.print
        asyncio.run(tail(settings, source, as_json, from_beginning, group, max_alerts, idle_timeout, emit=emit))


def register(app: typer.Typer) -> None:
    """Add `alerts` (tail) to the root CLI."""
    app.add_typer(alerts_app, name="alerts")
