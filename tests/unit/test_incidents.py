"""Incident hysteresis: floods are one incident, lone spikes none, closing after exactly m normals."""

from __future__ import annotations

import pytest

from stream_app.judging.incidents import IncidentState, incident_id, step
from stream_app.settings import IncidentSettings
from stream_app.wire.ids import alert_id, alert_id_of, event_key

CFG = IncidentSettings(open_k=3, open_n=5, close_m=20)


def ids(n: int, start: int = 0) -> list[str]:
    return [event_key("sensor.vectors", 0, i) for i in range(start, start + n)]


def test_a_flood_of_anomalies_is_one_incident() -> None:
    out, state = step(CFG, IncidentState(), "press-2", [True] * 1000, ids(1000))
    events = [e for _, e in out]
    assert events.count("opened") == 1 and events.count("closed") == 0
    assert events.index("opened") == 2  # the k-th anomaly of the last n opens it
    assert {i for i, _ in out[2:]} == {out[2][0]}
    assert state.open_id == out[2][0]


def test_isolated_anomalies_open_no_incident() -> None:
    flags = [i % 3 == 0 for i in range(300)]  # at most 2 anomalies in any 5 events: fewer than k
    out, state = step(CFG, IncidentState(), "press-2", flags, ids(300))
    assert all(i is None and e is None for i, e in out)
    assert state.open_id is None


def test_closes_after_exactly_m_consecutive_normal_events() -> None:
    flags = [True] * 5 + [False] * 19 + [True] + [False] * 25
    out, _ = step(CFG, IncidentState(), "press-2", flags, ids(len(flags)))
    events = [e for _, e in out]
    assert events.count("opened") == 1
    closed_at = events.index("closed")
    assert closed_at == 5 + 19 + 1 + 19  # the anomaly at 24 restarted the count of 20
    assert out[closed_at][0] is not None and all(i is None for i, _ in out[closed_at + 1 :])


def test_state_carries_across_batches_like_one_stream() -> None:
    flags = [True, False, True, True] + [False] * 30 + [True] * 4
    keys = ids(len(flags))
    whole, end = step(CFG, IncidentState(), "s", flags, keys)
    pieces, state = [], IncidentState()
    for b in range(0, len(flags), 7):
        out, state = step(CFG, IncidentState.loads(state.dumps()), "s", flags[b : b + 7], keys[b : b + 7])
        pieces += out
    assert pieces == whole and state == end


def test_incident_ids_are_deterministic_across_replays() -> None:
    flags = [True] * 4 + [False] * 25 + [True] * 3
    first, _ = step(CFG, IncidentState(), "press-2", flags, ids(len(flags), 100))
    replay, _ = step(CFG, IncidentState(), "press-2", flags, ids(len(flags), 100))
    assert first == replay
    opened = [i for i, e in first if e == "opened"]
    assert len(opened) == 2 and opened[0] != opened[1]
    assert opened[0] == incident_id("press-2", alert_id("sensor.vectors", 0, 102))  # the opening alert's id
    other, _ = step(CFG, IncidentState(), "press-3", flags, ids(len(flags), 100))
    assert other[2][0] != first[2][0]  # same alert ids, another source: another incident


def test_mismatched_lengths_and_impossible_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="one event key per event"):
        step(CFG, IncidentState(), "s", [True, False], ["a"])
    with pytest.raises(ValueError, match="open_k"):
        step(IncidentSettings(open_k=6, open_n=5), IncidentState(), "s", [True], ["a"])
    with pytest.raises(ValueError, match="incident state"):
        IncidentState.loads(b"[1, 2]")


def reference_step(cfg: IncidentSettings, state: IncidentState, source: str, flags: list[bool], keys: list[str]):
    """The event-by-event definition the bulk implementation must reproduce."""
    mask = (1 << cfg.open_n) - 1
    recent, open_id, run = state.recent, state.open_id, state.normal_run
    out = []
    for flag, key in zip(flags, keys, strict=True):
        recent = ((recent << 1) | flag) & mask
        event = None
        if open_id is None:
            if flag and recent.bit_count() >= cfg.open_k:
                open_id, run, event = incident_id(source, alert_id_of(key)), 0, "opened"
            out.append((open_id, event))
            continue
        current = open_id
        if flag:
            run = 0
        else:
            run += 1
            if run >= cfg.close_m:
                open_id, run, event = None, 0, "closed"
        out.append((current, event))
    return out, IncidentState(recent=recent, open_id=open_id, normal_run=run)


@pytest.mark.parametrize("rate", [0.01, 0.2, 0.6])
def test_bulk_runs_of_normal_events_give_the_event_by_event_result(rate: float) -> None:
    import numpy as np

    gen = np.random.default_rng(int(rate * 100))
    for cfg in (CFG, IncidentSettings(open_k=1, open_n=1, close_m=1), IncidentSettings(open_k=2, open_n=3, close_m=4)):
        state = ref_state = IncidentState()
        for b in range(30):
            flags = (gen.random(int(gen.integers(0, 60))) < rate).tolist()
            keys = ids(len(flags), b * 100)
            out, state = step(cfg, state, "s", flags, keys)
            ref, ref_state = reference_step(cfg, ref_state, "s", flags, keys)
            assert out == ref and state == ref_state
