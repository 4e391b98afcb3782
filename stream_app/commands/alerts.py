"""`linewatch alerts tail`: a live view of alerts (incidents opening and closing, scores vs thresholds).

With `--json`, one alert JSON object per line for scripts; otherwise one readable line per alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True, highlight=False)
alerts_app = typer.Typer(help="Watch alerts from the pipeline.", no_args_is_help=True)


def severity_style(severity: object) -> str:
    """Colour by how far above its threshold a score is: >= 10x bold red, >= 3x red, >= 1.5x yellow."""
    if not isinstance(severity, int | float):
        return "white"
    return "bold red" if severity >= 10 else "red" if severity >= 3 else "yellow" if severity >= 1.5 else "cyan"


def _clock(ts: object) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%H:%M:%S.%f")[:-3]  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _num(x: object, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "?"


def explain_text(alert: dict, top: int = 3) -> str:
    """The explanation in a few words: top sensors for vectors, the heatmap's peak cell for images.

    >>> explain_text({"explanation": {"top_features": [{"feature": "temp", "contribution": 5.0, "value": 71.5}]}})
    'top: temp +5 (=71.5)'
    >>> explain_text({"explanation": {"heatmap": [[0.1, 0.2], [0.9, 0.3]]}})
    'heatmap peak 0.9 at row 1, col 0 of 2x2'
    """
    explanation = alert.get("explanation") or {}
    if features := explanation.get("top_features"):
        parts = [
            f"{f.get('feature')} {_num(f.get('contribution'), '+.3g')} (={_num(f.get('value'))})"
            for f in features[:top]
            if isinstance(f, dict)
        ]
        return "top: " + ", ".join(parts)
    grid = explanation.get("heatmap")
    if isinstance(grid, list) and grid and all(isinstance(row, list) and row for row in grid):
        cells = [(v, r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if isinstance(v, int | float)]
        if cells:
            v, r, c = max(cells)
            return f"heatmap peak {_num(v)} at row {r}, col {c} of {len(grid)}x{len(grid[0])}"
    return ""


def format_alert(alert: dict) -> str:
    """One rich-markup line: time, source, incident marker, score vs threshold, severity, model, explanation."""
    event = alert.get("incident_event")
    incident = str(alert.get("incident_id") or "")[:8]
    marker = {
        "opened": f"[bold red]▲ incident {incident} opened[/]",
        "closed": f"[bold green]▼ incident {incident} closed[/]",
    }.get(str(event), f"[dim]· incident {incident}[/]" if incident else "[dim]·[/]")
    score, threshold, severity = alert.get("score"), alert.get("threshold"), alert.get("severity")
    # severity = score / threshold for positive thresholds (1 + excess / |threshold| otherwise): shown as "x".
    if not isinstance(severity, int | float) and isinstance(score, int | float) and isinstance(threshold, int | float):
        severity = score / threshold if threshold > 0 else None
    ratio = f" ({severity:.1f}x)" if isinstance(severity, int | float) else ""
    style = severity_style(severity)
    model = f"{alert.get('model', '?')} v{alert.get('version', '?')}"
    return (
        f"{_clock(alert.get('ts'))}  [bold]{escape(str(alert.get('source', '?')))}[/]  {marker}  "
        f"[{style}]score {_num(score)} > {_num(threshold)}{ratio}[/]  "
        f"[dim]{escape(model)}[/]  {escape(explain_text(alert))}"
    )


async def tail(
    settings,
    source: str = "*",
    as_json: bool = False,
    from_beginning: bool = False,
    group_id: str | None = None,
    max_alerts: int | None = None,
    idle_timeout: float | None = None,
    emit: Callable[[str], None] | None = None,
) -> int:
    """Print alerts until `max_alerts` were shown or none arrived for `idle_timeout` seconds; return the count."""
    from stream_app.alerts_client import subscribe

    if emit is None:
        emit = _print_json_line if as_json else console.print
    shown = 0
    alerts = subscribe(settings, source, group_id=group_id, from_beginning=from_beginning)
    try:
        while max_alerts is None or shown < max_alerts:
            try:
                async with asyncio.timeout(idle_timeout):
                    alert = await anext(alerts)
            except (TimeoutError, StopAsyncIteration):
                break
            emit(orjson.dumps(alert).decode() if as_json else format_alert(alert))
            shown += 1
    finally:
        await alerts.aclose()
    return shown


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
        asyncio.run(tail(settings, source, as_json, from_beginning, group, max_alerts, idle_timeout))


def register(app: typer.Typer) -> None:
    """Add `alerts` (tail) to the root CLI."""
    app.add_typer(alerts_app, name="alerts")
