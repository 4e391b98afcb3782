"""Alerts as one readable line each: time, source, incident marker, score vs threshold, explanation."""

from __future__ import annotations

from datetime import datetime

from rich.markup import escape


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
    if flags := alert.get("model_flags"):
        model += f" ({', '.join(map(str, flags))})"
    return (
        f"{_clock(alert.get('ts'))}  [bold]{escape(str(alert.get('source', '?')))}[/]  {marker}  "
        f"[{style}]score {_num(score)} > {_num(threshold)}{ratio}[/]  "
        f"[dim]{escape(model)}[/]  {escape(explain_text(alert))}"
    )
