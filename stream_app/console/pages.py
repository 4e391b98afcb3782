"""What each page shows, computed from the live state, the registry and the fleet: plain data, no HTTP.

Kept apart from the routes so the numbers a page prints can be checked without a browser.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Any

from stream_app.console.fleet import Fleet, retrain_schedule
from stream_app.console.live import LiveState, line_of
from stream_app.registry.backbones import model_flags
from stream_app.registry.versions import Registry
from stream_app.settings import Settings


def grouped_tiles(tiles: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Tiles grouped by line prefix, lines in name order.

    >>> [(line, [t["source"] for t in ts]) for line, ts in grouped_tiles([{"source": "l2/a"}, {"source": "l1/b"}])]
    [('l1', ['l1/b']), ('l2', ['l2/a'])]
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for tile in tiles:
        groups.setdefault(line_of(tile["source"]), []).append(tile)
    return sorted(groups.items())


def status_counts(tiles: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"ok": 0, "incident": 0, "stale": 0, "deadletters": 0}
    for tile in tiles:
        counts[tile["status"]] = counts.get(tile["status"], 0) + 1
    return counts


def overview_payload(state: LiveState, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    tiles = state.overview(now)
    return {"now": now, "tiles": tiles, "counts": status_counts(tiles)}


def incident_rows(state: LiveState, source: str) -> list[dict[str, Any]]:
    return [asdict(i) for i in state.source_incidents(source)[:50]]


def source_payload(state: LiveState, source: str, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    payload = state.timeline(source, now)
    payload["tile"] = state.tile(source, now) if source in state.sources else None
    payload["incidents"] = incident_rows(state, source)
    return payload


def feature_bars(alert: dict[str, Any]) -> list[dict[str, Any]]:
    """Top sensors of a vector alert with bar widths in percent of the largest contribution.

    >>> feature_bars({"explanation": {"top_features": [{"feature": "a", "contribution": 2.0, "value": 9.0},
    ...                                                 {"feature": "b", "contribution": 1.0, "value": 3.0}]}})[1]["pct"]
    50.0
    """
    top = (alert.get("explanation") or {}).get("top_features") or []
    biggest = max((abs(float(f.get("contribution") or 0.0)) for f in top), default=0.0) or 1.0
    return [
        {**f, "pct": round(100.0 * abs(float(f.get("contribution") or 0.0)) / biggest, 1)}
        for f in top
        if isinstance(f, dict)
    ]


def models_view(settings: Settings, registry: Registry, fleet: Fleet, state: LiveState) -> list[dict[str, Any]]:
    """Per model: versions with validation numbers, production pointer, who serves what, label precision."""
    serving = fleet.serving()
    prec = state.precision()
    out = []
    for name in registry.models():
        production = None
        with contextlib.suppress(LookupError):
            production = registry.production(name).version
        versions: list[dict[str, Any]] = []
        for v in reversed(registry.versions(name)):
            try:
                m = registry.manifest(name, v)
            except Exception as exc:  # a broken manifest is shown, not fatal to the page
                versions.append({"version": v, "error": str(exc)})
                continue
            validation = m.get("validation") or {}
            metrics = validation.get("metrics") or {}
            detection, current_detection = worst_regression_set(metrics)
            versions.append(
                {
                    "version": v, "created_at": str(m.get("created_at", ""))[:19], "kind": m.get("kind", ""),
                    "flags": model_flags(m),
                    "parent": m.get("parent"), "trigger": m.get("trigger"), "decision": validation.get("decision"),
                    "reason": validation.get("reason", ""), "false_alarm_rate": metrics.get("false_alarm_rate"),
                    "detection_rate": detection, "current_detection_rate": current_detection,
                    "holdout_events": metrics.get("holdout_events"), "production": v == production,
                    "serving": serving.get(name, {}).get(v, []),
                }
            )  # fmt: skip
        total = prec.get((name, None))
        per_source = sorted(
            ({"source": src, **_prec(p)} for (model, src), p in prec.items() if model == name and src is not None),
            key=lambda r: r["source"],
        )
        out.append(
            {
                "name": name, "production": production, "versions": versions,
                "rollback_possible": len(registry.serving_stack(name)) >= 2,
                "precision": _prec(total) if total else None, "precision_by_source": per_source,
            }
        )  # fmt: skip
    return out


def _prec(p: Any) -> dict[str, Any]:
    return {"real": p.real, "false": p.false, "labelled": p.labelled, "precision": p.value}


def fleet_view(settings: Settings, fleet: Fleet, state: LiveState) -> dict[str, Any]:
    return {
        "workers": [asdict(w) for w in fleet.workers.values()],
        "schedules": retrain_schedule(settings),
        "console": {
            "verdicts_seen": state.verdicts_seen,
            "sources": len(state.sources),
            "alerts_in_memory": len(state.alerts),
            "labels": len(state.labels),
        },
    }


def worst_regression_set(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(candidate, production) detection rate of the regression set the candidate did worst on.

    >>> worst_regression_set({"regression": {"offset": {"detection_rate": 0.9, "current_detection_rate": 1.0},
    ...                                      "stuck": {"detection_rate": 1.0}}})
    (0.9, 1.0)
    """
    rows = [r for r in (metrics.get("regression") or {}).values() if r.get("detection_rate") is not None]
    if not rows:
        return None, None
    worst = min(rows, key=lambda r: r["detection_rate"])
    return worst["detection_rate"], worst.get("current_detection_rate")
