"""Poison isolation and the per-model source cap: pure helpers the pipeline calls."""

from __future__ import annotations

import pytest

from stream_app.scoring.admission import SourceAdmission
from stream_app.scoring.isolation import isolate_failures


def scorer_that_chokes_on(poison: set[int]):
    seen: list[int] = []

    async def score(batch):
        seen.append(len(batch))
        if poison & set(batch):
            raise ValueError(f"cannot score {sorted(poison & set(batch))}")
        return [float(x) for x in batch]

    return score, seen


async def test_one_poison_record_among_256_is_isolated_and_the_rest_scored():
    items = list(range(256))
    score, _ = scorer_that_chokes_on({137})
    out = await isolate_failures(items, score)
    assert set(out.failures) == {137} and "137" in str(out.failures[137])
    assert [r for i, r in enumerate(out.results) if i != 137] == [float(i) for i in items if i != 137]
    assert out.calls <= 2 * 8 + 1  # bisection, not one call per record


async def test_several_poison_records_are_all_found():
    score, _ = scorer_that_chokes_on({0, 5, 6, 63})
    out = await isolate_failures(list(range(64)), score)
    assert set(out.failures) == {0, 5, 6, 63} and sum(r is not None for r in out.results) == 60


async def test_a_clean_batch_is_one_call():
    score, seen = scorer_that_chokes_on(set())
    out = await isolate_failures(list(range(10)), score)
    assert out.failures == {} and seen == [10] and out.calls == 1


async def test_errors_outside_the_isolated_types_propagate():
    async def down(batch):
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        await isolate_failures([1, 2, 3], down, isolate=(ValueError,))


async def test_an_empty_batch_needs_no_call():
    score, seen = scorer_that_chokes_on(set())
    assert (await isolate_failures([], score)).calls == 0 and seen == []


def test_sources_beyond_the_cap_are_refused_per_model_and_known_ones_always_pass():
    gate = SourceAdmission(max_sources=3)
    assert gate.admit("sensors", [f"s{i}" for i in range(5)]) == [True, True, True, False, False]
    assert gate.admit("sensors", ["s0", "s4", "s2"]) == [True, False, True]
    assert gate.admit("camera", ["s4"]) == [True]
    gate.forget("sensors", "s0")
    assert gate.admit("sensors", ["s4"]) == [True] and gate.count("sensors") == 3


async def test_a_batch_where_every_record_fails_alone_says_so():
    async def broken(batch):
        raise RuntimeError("device lost")

    out = await isolate_failures([1, 2, 3, 4], broken)
    assert out.all_failed and len(out.failures) == 4
    score, _ = scorer_that_chokes_on({2})
    assert not (await isolate_failures([1, 2, 3], score)).all_failed


async def test_a_lost_device_fails_the_batch_instead_of_dead_lettering_every_record() -> None:
    """torch raises RuntimeError for a failing GPU as for a bad input: every record failed alone, so each became a
    committed `rejected_by_model` dead letter instead of the batch being retried once the device is back."""
    from types import SimpleNamespace

    import numpy as np

    from stream_app.ops.metrics import WorkerMetrics
    from stream_app.scoring.isolation import DeviceFailure
    from stream_app.scoring.pipeline import BatchOutputs, BatchReport, InspectionPipeline, Routed
    from stream_app.wire.records import Record

    class LostDevice:
        def score(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    class Refuses:
        def score(self, x: np.ndarray) -> np.ndarray:
            raise ValueError("expected 4 features")

    pipeline = InspectionPipeline.__new__(InspectionPipeline)
    pipeline.metrics = WorkerMetrics()
    records = [Record("in", 0, i, b"s", b"{}") for i in range(8)]
    group = Routed(records, [SimpleNamespace(source="s")] * 8)  # type: ignore[list-item]
    for scorer, lost in ((LostDevice(), True), (Refuses(), False)):
        loaded = SimpleNamespace(name="m", version="1", runs_inline=True, scorer=scorer)
        batch = BatchOutputs("dead", 10**6, pipeline.metrics, BatchReport(events=8))
        if lost:
            with pytest.raises(DeviceFailure, match="CUDA error"):
                await pipeline._scored(loaded, group, np.zeros((8, 4), np.float32), batch)  # type: ignore[arg-type]
            assert batch.report.deadletters == {}
        else:
            assert await pipeline._scored(loaded, group, np.zeros((8, 4), np.float32), batch) is None  # type: ignore[arg-type]
            assert batch.report.deadletters == {"rejected_by_model": 8}
