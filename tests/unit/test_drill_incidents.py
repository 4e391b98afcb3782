"""The chaos drills' incident check: which incident events a verdict sequence implies."""

from stream_app.ops.drills import implied_incident_events
from stream_app.settings import IncidentSettings
from stream_app.wire.ids import alert_id


def verdicts(flags: str, source: str = "line-1/a", partition: int = 0) -> list[dict]:
    return [
        {"source": source, "topic": "t", "partition": partition, "offset": i, "anomalous": f == "T"}
        for i, f in enumerate(flags)
    ]


def test_an_incident_opens_on_the_kth_anomaly_and_closes_after_m_normal_events() -> None:
    cfg = IncidentSettings(open_k=2, open_n=3, close_m=2)
    seq = verdicts("FTFTFFF")
    implied = implied_incident_events(cfg, list(reversed(seq)))  # order comes from the offsets
    assert implied == {(alert_id("t", 0, 3), "opened"), (alert_id("t", 0, 5), "closed")}


def test_sources_are_followed_separately() -> None:
    cfg = IncidentSettings(open_k=2, open_n=2, close_m=5)
    mixed = verdicts("TF", "a", 0) + verdicts("T", "b", 1)
    assert implied_incident_events(cfg, mixed) == set()
