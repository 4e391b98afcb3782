"""What a source's Redis value holds, and what a corrupted one gives."""

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from stream_app.judging import incidents, thresholds
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.settings import IncidentSettings, ThresholdSettings

CFG = ThresholdSettings()


def judged_state(batches: int, replay_batches: int = 2) -> tuple[SourceState, ThresholdStore]:
    store = ThresholdStore(aioredis.Redis(), CFG, IncidentSettings(), "t", replay_batches=replay_batches)
    state = SourceState(thresholds.initial_state(CFG, np.arange(1000.0) / 100), incidents.IncidentState())
    for b in range(batches):
        state, _ = store._judge_source(state, "s", np.full(3, 0.5), [f"k{b}-{i}" for i in range(3)])
    return state, store


def test_a_state_round_trips_with_its_remembered_verdicts_and_keeps_only_the_last_batches() -> None:
    state, _ = judged_state(5)
    assert [b.keys[0] for b in state.recent] == ["k3-0", "k4-0"]
    assert SourceState.loads(state.dumps()) == state


def test_remembered_verdicts_are_given_again_and_not_absorbed_twice() -> None:
    state, store = judged_state(2)
    again, verdicts = store._judge_source(state, "s", np.full(3, 99.0), ["k1-0", "k1-1", "k1-2"])
    assert again == state and [v.score for v in verdicts] == [0.5] * 3  # the first judgement, not 99


def test_a_state_written_before_verdicts_were_remembered_still_loads() -> None:
    state, _ = judged_state(1)
    old = orjson.loads(state.dumps())
    del old["recent"]
    assert SourceState.loads(orjson.dumps(old)).recent == ()


def test_a_corrupted_memory_is_a_clear_error() -> None:
    old = orjson.loads(judged_state(1)[0].dumps())
    old["recent"][0]["s"] = old["recent"][0]["s"][:-1]
    with pytest.raises(ValueError, match="differ in length"):
        SourceState.loads(orjson.dumps(old))
