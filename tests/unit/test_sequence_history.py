"""A windowed model's per-source history in the threshold state: what it stores, and which rows extend it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from stream_app.judging import incidents, thresholds
from stream_app.judging.history import History, Sequences
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.settings import IncidentSettings, ThresholdSettings

CFG = ThresholdSettings()
W = 4  # the fake model's window
SRC = "line-1/press-1"


def window_sums(history: np.ndarray | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for `score_with_history` whose scores show the rows each one saw: the sum of the first
    value over the W-row window (padded with the sequence's first row, as the RVAE pads)."""
    seq = rows if history is None else np.concatenate([history, rows])
    padded = np.concatenate([np.repeat(seq[:1], W - 1, axis=0), seq])[len(seq) - len(rows) :]
    scores = np.array([padded[i : i + W, 0].sum() for i in range(len(rows))])
    return scores, seq[-(W - 1) :]


class FakeModel:
    def __init__(self) -> None:
        self.calls: list[list[tuple[np.ndarray | None, np.ndarray]]] = []

    async def __call__(self, pairs: list[tuple[np.ndarray | None, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        self.calls.append(pairs)
        return [window_sums(h, r) for h, r in pairs]


def store() -> ThresholdStore:
    return ThresholdStore(aioredis.Redis(), CFG, IncidentSettings(), "t")  # never connected: pure parts only


def fresh_state() -> SourceState:
    return SourceState(thresholds.initial_state(CFG, np.arange(1000.0) * 10), incidents.IncidentState())


def rows(first: int, n: int) -> np.ndarray:
    return np.stack([np.arange(first, first + n), np.zeros(n)], axis=1).astype(np.float32)


async def judge_locally(s: ThresholdStore, state: SourceState, offsets: range, model: FakeModel):
    """One batch of SRC's events at these offsets (row i holds i), judged from `state` without Redis."""
    keys = [f"sensor.vectors/0/{i}" for i in offsets]
    seq = Sequences(rows(offsets[0], len(offsets)), model, W)
    x = np.full(len(keys), np.nan)
    computed = await s._compute({SRC: (0, state, False)}, {SRC: list(range(len(keys)))}, x, keys, seq)
    _, new_state, verdicts = computed[SRC]
    return new_state, verdicts, seq


def test_a_state_round_trips_with_its_history() -> None:
    state = SourceState(fresh_state().threshold, incidents.IncidentState(), (), History.of(rows(7, 3)))
    again = SourceState.loads(state.dumps())
    assert again == state
    np.testing.assert_array_equal(again.history.rows(), rows(7, 3))  # type: ignore[union-attr]


def test_a_state_without_history_still_loads_and_stores_none() -> None:
    state = fresh_state()
    assert "hist" not in orjson.loads(state.dumps())  # window-1 models pay nothing
    assert SourceState.loads(state.dumps()).history is None


def test_a_corrupted_history_is_a_clear_error() -> None:
    d = orjson.loads(
        SourceState(fresh_state().threshold, incidents.IncidentState(), (), History.of(rows(0, 2))).dumps()
    )
    d["hist"]["f32"] = d["hist"]["f32"][:-4]  # a row cut short
    with pytest.raises(ValueError, match="not rows of 2"):
        SourceState.loads(orjson.dumps(d))
    d["hist"]["f32"] = "not base64!"
    with pytest.raises(ValueError, match="source state"):
        SourceState.loads(orjson.dumps(d))


async def test_batches_scored_after_the_stored_history_equal_one_pass_over_the_sequence() -> None:
    s, model, state = store(), FakeModel(), fresh_state()
    got = []
    for lo, hi in [(0, 2), (2, 3), (3, 9), (9, 12)]:
        state, verdicts, _ = await judge_locally(s, state, range(lo, hi), model)
        got += [v.score for v in verdicts]
    assert got == window_sums(None, rows(0, 12))[0].tolist()
    np.testing.assert_array_equal(state.history.rows(), rows(9, 3))  # type: ignore[union-attr]


async def test_replayed_events_keep_their_verdicts_and_do_not_extend_the_history() -> None:
    s, model = store(), FakeModel()
    state, first, _ = await judge_locally(s, fresh_state(), range(0, 5), model)
    model.calls.clear()
    state, verdicts, seq = await judge_locally(s, state, range(3, 8), model)  # 3, 4 redelivered; 5-7 new
    assert verdicts[:2] == first[3:]
    ((history, new),) = model.calls[0]  # one call, only the new rows, after the stored rows 2-4
    np.testing.assert_array_equal(history, rows(2, 3))
    np.testing.assert_array_equal(new, rows(5, 3))
    assert [v.score for v in verdicts[2:]] == window_sums(None, rows(0, 8))[0][5:].tolist()
    np.testing.assert_array_equal(state.history.rows(), rows(5, 3))  # type: ignore[union-attr]
    assert seq.fresh == {SRC: [2, 3, 4]}


async def test_a_batch_judged_entirely_before_is_not_scored_again() -> None:
    s, model = store(), FakeModel()
    state, first, _ = await judge_locally(s, fresh_state(), range(0, 5), model)
    again, verdicts, seq = await judge_locally(s, state, range(0, 5), model)
    assert verdicts == first and again == state
    assert len(model.calls) == 1 and seq.calls == 0


async def test_explanations_see_the_rows_each_event_followed() -> None:
    s, model = store(), FakeModel()
    state, _, _ = await judge_locally(s, fresh_state(), range(0, 5), model)
    _, _, seq = await judge_locally(s, state, range(3, 8), model)
    same = list(range(5))
    np.testing.assert_array_equal(seq.before(3, SRC, same), np.concatenate([rows(2, 3), rows(5, 1)]))
    np.testing.assert_array_equal(seq.before(1, SRC, same), rows(3, 1))  # redelivered: the batch's rows before it
    assert seq.before(0, SRC, same) is None


async def test_a_new_sources_padded_windows_are_warm_up_never_anomalous_and_not_learned() -> None:
    """A repeated first row looks like a stuck sensor to a model of a moving process (measured on the simulated
    pump line: padded windows scored ~2x the alert level), so the first W - 1 events may not alarm or teach."""
    s, model = store(), FakeModel()
    state = fresh_state()
    high = 1e9  # rows far above any threshold: every window sum would be anomalous
    keys = [f"sensor.vectors/0/{i}" for i in range(6)]
    seq = Sequences(np.full((6, 2), high, np.float32), model, W)
    computed = await s._compute({SRC: (0, state, False)}, {SRC: list(range(6))}, np.full(6, np.nan), keys, seq)
    _, after, verdicts = computed[SRC]
    assert [v.anomalous for v in verdicts] == [False] * (W - 1) + [True] * (6 - W + 1)
    assert after.threshold.count == state.threshold.count  # nothing absorbed: warm-up, then anomalies

    later = Sequences(np.full((2, 2), high, np.float32), model, W)  # the next batch has a full history
    new_keys = ["sensor.vectors/0/6", "sensor.vectors/0/7"]
    computed = await s._compute({SRC: (0, after, False)}, {SRC: [0, 1]}, np.full(2, np.nan), new_keys, later)
    assert all(v.anomalous for v in computed[SRC][2])


async def test_an_incident_opening_in_a_new_sources_first_batch_stops_its_learning() -> None:
    """The batch is judged again, learning nothing from the event that opens the incident, only when no event
    had a mask already; a windowed model's first batch always has one (its warm-up), so every exceedance after
    the opening taught the state there."""
    s, model = store(), FakeModel()
    state = fresh_state()
    n, fault_at = 256, 60
    values = np.zeros(n, np.float32)
    values[fault_at:] = 1e6  # a fault from event 60 on: every window after it far above the level
    seq = Sequences(np.stack([values, np.zeros(n, np.float32)], axis=1), model, W)
    keys = [f"sensor.vectors/0/{i}" for i in range(n)]
    computed = await s._compute({SRC: (0, state, False)}, {SRC: list(range(n))}, np.full(n, np.nan), keys, seq)
    _, after, verdicts = computed[SRC]
    opened = next(i for i, v in enumerate(verdicts) if v.incident_event == "opened")
    assert after.incident.open_id is not None and opened >= fault_at
    # Only the exceedances before the opening count (~20 from calibration + 2), not the ~190 after it.
    assert after.threshold.n_t <= state.threshold.n_t + (opened - fault_at) + 1
    assert after.threshold.count <= opened - (W - 1)  # normal events learned: before the opening, past warm-up
