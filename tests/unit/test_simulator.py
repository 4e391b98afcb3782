"""The line simulator: shapes, determinism, labelled faults that stand out, defects that show."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.sim.simulator import (
    FRAME_DEFECTS,
    NORMAL,
    SENSOR_FAULTS,
    LineSimulator,
    MachineType,
    SensorMachine,
    SurfaceCamera,
    normal_images,
    normal_vectors,
    training_samples,
)


def _run(sim: LineSimulator, steps: int) -> tuple[np.ndarray, np.ndarray]:
    samples = [m.next(0.0) for _ in range(steps) for m in sim.machines]
    return np.stack([s.values for s in samples]), np.array([s.truth for s in samples])


@pytest.fixture(scope="module")
def faulty_run() -> tuple[np.ndarray, np.ndarray]:
    return _run(LineSimulator(lines=2, machines=2, cameras=0, fault_rate=0.05, seed=1), 3000)


def test_sources_and_shapes():
    sim = LineSimulator(lines=2, machines=3, cameras=2, n_features=6, image_size=48, seed=0)
    assert [m.source for m in sim.machines][:3] == ["line-1/press-1", "line-1/press-2", "line-1/press-3"]
    assert [c.source for c in sim.cameras] == ["line-1/cam-1", "line-1/cam-2", "line-2/cam-1", "line-2/cam-2"]
    sample = sim.machines[0].next(ts=12.5)
    assert sample.values.shape == (6,) and sample.values.dtype == np.float32 and sample.ts == 12.5
    frame = sim.cameras[0].next(ts=1.0)
    assert frame.image.shape == (48, 48) and frame.image.dtype == np.uint8


def test_same_seed_same_stream_other_seed_other_stream():
    a, ta = _run(LineSimulator(lines=1, machines=2, cameras=0, fault_rate=0.05, seed=7), 300)
    b, tb = _run(LineSimulator(lines=1, machines=2, cameras=0, fault_rate=0.05, seed=7), 300)
    c, _ = _run(LineSimulator(lines=1, machines=2, cameras=0, fault_rate=0.05, seed=8), 300)
    np.testing.assert_array_equal(a, b)
    assert (ta == tb).all()
    assert not np.allclose(a, c)
    f1 = SurfaceCamera("cam", seed=3, defect_rate=0.5).take(5)
    f2 = SurfaceCamera("cam", seed=3, defect_rate=0.5).take(5)
    assert all((x.image == y.image).all() and x.truth == y.truth for x, y in zip(f1, f2, strict=True))


def test_training_data_matches_the_simulated_fleet():
    X, images = training_samples(400, 6, n_features=8, image_size=32, seed=5)
    assert X.shape == (400, 8) and X.dtype == np.float32 and np.isfinite(X).all()
    assert images.shape == (6, 32, 32) and images.dtype == np.uint8
    live, truth = _run(LineSimulator(lines=2, machines=2, cameras=0, fault_rate=0.0, seed=5), 200)
    assert (truth == NORMAL).all()
    # same machines: the live operating point sits inside the training spread, channel by channel
    z = np.abs(live.mean(0) - X.mean(0)) / X.std(0)
    assert z.max() < 1.0
    np.testing.assert_array_equal(normal_vectors(10, seed=5), normal_vectors(10, seed=5))


def test_all_faults_occur_at_about_the_requested_rate(faulty_run):
    _, truth = faulty_run
    assert set(truth) == {NORMAL, *SENSOR_FAULTS}
    assert 0.03 < (truth != NORMAL).mean() < 0.08
    clean = _run(LineSimulator(lines=1, machines=1, cameras=0, fault_rate=0.0, seed=1), 2000)[1]
    assert (clean == NORMAL).all()


def test_faults_are_far_from_normal_by_a_simple_z_score(faulty_run):
    X, truth = faulty_run
    train = normal_vectors(20_000, seed=1)
    z = np.abs((X - train.mean(0)) / train.std(0)).max(axis=1)
    normal_z = z[truth == NORMAL]
    assert np.quantile(normal_z, 0.99) < 4.0
    for fault in SENSOR_FAULTS:
        fault_z = z[truth == fault]
        assert np.quantile(fault_z, 0.05) > 4.0, fault
        assert fault_z.max() < 20.0, f"{fault} is absurd"  # anomalous, not absurd


def test_stuck_channel_holds_one_value():
    machine = SensorMachine("m", MachineType.create(8, seed=0), seed=2, fault_rate=0.2, faults=["stuck"])
    samples = machine.take(400)
    run = [s.values for s in samples if s.truth == "stuck"][:8]
    assert len(run) >= 8
    frozen = np.ptp(np.stack(run), axis=0) == 0
    assert frozen.sum() == 1


def test_drift_moves_the_operating_point():
    base = MachineType.create(8, seed=0)
    steady = SensorMachine("m", base, seed=0).take(3000)
    drifting = SensorMachine("m", base, seed=0, drift=2.0).take(3000)
    late = slice(2500, 3000)
    shift = np.stack([s.values for s in drifting[late]]).mean(0) - np.stack([s.values for s in steady[late]]).mean(0)
    assert np.linalg.norm(shift / base.scale) > 4.0  # ~5 sigma after 2500 events at 2 sigma / 1000


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="fault_rate"):
        SensorMachine("m", MachineType.create(4), fault_rate=0.9)
    with pytest.raises(ValueError, match="unknown faults"):
        SensorMachine("m", MachineType.create(4), faults=["melt"])


def test_frame_defects_are_labelled_and_visible():
    camera = SurfaceCamera("line-1/cam-1", seed=4, defect_rate=0.5)
    frames = camera.take(300)
    assert {f.truth for f in frames} == {NORMAL, *FRAME_DEFECTS}
    reference = normal_images(64, lines=1, seed=4).astype(np.float64)
    mean, std = reference.mean(0), reference.std(0) + 1e-9
    peak = np.array([np.abs((f.image - mean) / std).max() for f in frames])
    truth = np.array([f.truth for f in frames])
    # a defect makes the frame's most deviant pixel stand out well beyond the texture's own variation
    assert np.quantile(peak[truth == NORMAL], 0.95) < np.quantile(peak[truth != NORMAL], 0.2)
    assert 100 < (truth != NORMAL).sum() < 200
