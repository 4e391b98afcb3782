"""What the console's live pages show, folded from messages without servers (LiveState, labels, pages)."""

from __future__ import annotations

from stream_app.alerts.labels import Label, confirmed_anomalies, false_alarms, latest_per_alert, precision
from stream_app.console.live import LiveState
from stream_app.console.pages import feature_bars, grouped_tiles, overview_payload


def state(**kw) -> LiveState:
    cfg = {"bucket_s": 1.0, "timeline_s": 60.0, "stale_after_s": 5.0, "deadletter_window_s": 10.0, "max_alerts": 100}
    return LiveState(**{**cfg, **kw})


def verdict(source: str, score: float, incident: str | None = None, thr: float = 4.0) -> dict:
    return {"source": source, "score": score, "threshold": thr, "anomalous": score > thr, "model": "m",
            "version": "1", "incident_id": incident}  # fmt: skip


def test_a_burst_of_verdicts_becomes_one_point_per_bucket():
    s = state()
    for i in range(20_000):  # 20k verdicts over 10 s
        s.add_verdict(verdict("l1/a", float(i % 7)), 1000.0 + i / 2000)
    tl = s.timeline("l1/a", now=1010.0)
    assert len(tl["points"]) == 10 and sum(p[1] for p in tl["points"]) == 20_000
    t, n, lo, hi, _mean, thr, anomalies = tl["points"][0]
    assert (t, n, lo, hi, thr) == (1000.0, 2000, 0.0, 6.0, 4.0) and anomalies == sum(
        1 for i in range(2000) if i % 7 > 4
    )


def test_timeline_keeps_only_its_window():
    s = state(timeline_s=10.0)
    for i in range(100):
        s.add_verdict(verdict("l1/a", 1.0), 1000.0 + i)
    assert len(s.timeline("l1/a", now=1100.0)["points"]) == 11


def test_tile_states_incident_beats_stale_beats_dead_letters():
    s = state()
    s.add_verdict(verdict("l1/ok", 1.0), 100.0)
    s.add_verdict(verdict("l1/bad", 9.0, incident="inc1"), 100.0)
    s.add_verdict(verdict("l1/quiet", 1.0), 90.0)
    s.add_verdict(verdict("l2/leaky", 1.0), 100.0)
    for t in (91.0, 95.0, 99.0, 99.5):  # 1 in the window before, 3 in the last 10 s: rising
        s.add_deadletter("l2/leaky", t - 5.0 if t == 91.0 else t)
    tiles = {t["source"]: t for t in overview_payload(s, now=101.0)["tiles"]}
    assert tiles["l1/ok"]["status"] == "ok"
    assert tiles["l1/bad"]["status"] == "incident" and "inc1" in tiles["l1/bad"]["detail"]
    assert tiles["l1/quiet"]["status"] == "stale" and tiles["l1/quiet"]["detail"] == "no data for 11 s"
    assert tiles["l2/leaky"]["status"] == "deadletters"
    assert [line for line, _ in grouped_tiles(list(tiles.values()))] == ["l1", "l2"]


def test_incident_closes_when_verdicts_stop_carrying_it_and_redis_state_counts_too():
    s = state()
    s.add_verdict(verdict("l1/a", 9.0, incident="inc1"), 100.0)
    s.add_alert({"alert_id": "a1", "source": "l1/a", "incident_id": "inc1", "incident_event": "opened", "ts": 100.0,
                 "severity": 2.5, "model": "m", "version": "1"})  # fmt: skip
    s.add_verdict(verdict("l1/a", 1.0), 101.0)
    inc = s.incidents["inc1"]
    assert inc.closed_at == 101.0 and inc.alerts == 1 and inc.max_severity == 2.5 and inc.first_alert_id == "a1"
    assert s.tile("l1/a", now=101.5)["status"] == "ok"
    # a source that went silent with an incident open in Redis still shows red
    s.set_redis({"l1/b": [{"model": "m", "version": "1", "threshold": 3.0, "open_id": "inc9"}]})
    assert s.tile("l1/b", now=200.0)["status"] == "incident" and s.tile("l1/b", now=200.0)["threshold"] == 3.0


def test_alerts_are_bounded_and_listed_per_incident():
    s = state(max_alerts=10)
    for i in range(25):
        s.add_alert({"alert_id": f"a{i}", "source": "l1/a", "incident_id": "inc", "ts": float(i), "severity": 1.0})
    assert len(s.alerts) == 10 and next(a["alert_id"] for a in s.incident_alerts("inc")) == "a15"


def lab(alert: str, kind: str, at: float, source: str = "s") -> Label:
    return Label(alert, None, source, "m", "1", kind, "", "op", at, None, None, None, ("t", 0, 0))  # type: ignore[arg-type]


def test_newest_label_wins_and_precision_counts_alerts_not_clicks():
    labels = latest_per_alert(
        [lab("a", "real_defect", 1.0), lab("a", "false_alarm", 2.0), lab("b", "real_defect", 1.5)]
    )
    assert [(x.alert_id, x.label) for x in labels] == [("b", "real_defect"), ("a", "false_alarm")]
    assert [x.alert_id for x in confirmed_anomalies(labels)] == ["b"] and [
        x.alert_id for x in false_alarms(labels)
    ] == ["a"]
    p = precision(labels)
    assert p[("m", None)].value == 0.5 and p[("m", "s")].labelled == 2


def test_feature_bars_scale_to_the_largest_contribution():
    bars = feature_bars({"explanation": {"top_features": [{"feature": "vib", "contribution": 7.4, "value": 9.8},
                                                          {"feature": "temp", "contribution": 3.7, "value": 61.5}]}})  # fmt: skip
    assert [b["pct"] for b in bars] == [100.0, 50.0]
    assert feature_bars({}) == [] and feature_bars({"explanation": None}) == []


def test_junk_dead_letters_from_random_sources_cannot_grow_the_console_without_bound():
    """Anyone who can write input can make dead letters under any key or `source` header: each made a tile held
    for good (100k: 267 MB, and the overview took seconds to build). The newest `max_sources` are kept, the
    sources with verdicts before dead-letter-only ones, and names are cut."""
    s = state(max_sources=50)
    for i in range(10):
        s.add_verdict(verdict(f"l1/m{i}", 1.0), 1000.0)
    for i in range(5000):
        s.add_deadletter(f"junk-{i}-" + "x" * 10_000, 1000.0 + i / 100)
    assert len(s.sources) == 50 and all(len(name) <= 256 for name in s.sources)
    assert all(f"l1/m{i}" in s.sources for i in range(10))  # real sources outlive the junk
