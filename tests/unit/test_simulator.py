"""The line simulator: the pump process's structure, its fault families and labels, determinism, frames."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.sim.plant import (
    CORR_BREAK_LAG,
    FAMILIES,
    FAMILY_SENSORS,
    NOISE,
    PRIORITY,
    SENSOR_FAMILIES,
    SENSORS,
    Episode,
    Plant,
    S,
    channel_sensors,
    normal_spread,
    schedule,
    simulate,
)
from stream_app.sim.simulator import (
    FRAME_DEFECTS,
    NORMAL,
    SENSOR_FAULTS,
    LineSimulator,
    SensorMachine,
    SurfaceCamera,
    normal_images,
    normal_vectors,
    training_samples,
)


def _run(sim: LineSimulator, steps: int) -> tuple[np.ndarray, np.ndarray]:
    samples = [m.next(0.0) for _ in range(steps) for m in sim.machines]
    return np.stack([s.values for s in samples]), np.array([s.truth for s in samples])


def _with_and_without(family: str, start: int = 1000, length: int = 120, seed: int = 3):
    """The same plant run with one episode and without it: (faulty X, labels, clean X)."""
    X, y = simulate(start + length + 200, seed=seed, episodes=[Episode(family, start, length)])
    clean, _ = simulate(start + length + 200, seed=seed)
    return X, y, clean


# ------------------------------------------------------------------ the process


def test_sensors_are_correlated_through_the_latent_operating_point():
    X, _ = simulate(6000, seed=3)
    share = np.linalg.eigvalsh(np.corrcoef(X, rowvar=False))[::-1]
    assert share[:3].sum() / share.sum() > 0.75  # independent sensors would give 3/13 = 0.23
    c = np.corrcoef(X, rowvar=False)
    assert c[S["speed_rpm"], S["motor_current_a"]] > 0.9  # affinity laws: power ~ n^3
    assert c[S["speed_rpm"], S["pressure_out_bar"]] > 0.9  # head ~ n^2
    assert c[S["speed_rpm"], S["vib_rms_mm_s"]] > 0.9
    assert c[S["flow_m3h"], S["power_kw"]] > 0.7
    assert abs(c[S["voltage_v"], S["motor_current_a"]]) < 0.2  # the grid is not driven by the load


def test_a_regime_change_moves_the_load_sensors_together():
    X, _ = simulate(3000, seed=1)
    speed = X[:, S["speed_rpm"]]
    step = np.flatnonzero(np.abs(np.diff(speed)) > 60)[0] + 1  # a set-point ramp under way
    before, after = X[step - 20 : step - 10], X[step + 15 : step + 25]
    moved = np.abs(after.mean(0) - before.mean(0)) / NOISE
    for name in ("flow_m3h", "pressure_out_bar", "motor_current_a", "power_kw", "vib_rms_mm_s"):
        assert moved[S[name]] > 5, name
    assert moved[S["voltage_v"]] < 5


@pytest.mark.parametrize("family", FAMILIES)
def test_each_fault_family_changes_its_documented_sensors(family):
    X, _, clean = _with_and_without(family)
    diff = np.abs(X - clean) / NOISE
    assert not diff[:1000].any(), "nothing changes before the episode"
    for name in FAMILY_SENSORS[family]:
        assert diff[1000:1120, S[name]].mean() > 2.0, name
    if family in SENSOR_FAMILIES:  # a transmitter's fault leaves every other reading exactly as it was
        others = [S[n] for n in SENSORS if n not in FAMILY_SENSORS[family]]
        assert not diff[:, others].any()
        assert not diff[1120:].any()


def test_a_stuck_sensor_holds_one_value_and_a_decoupled_one_reads_the_past_across_blocks():
    plant = Plant(np.random.default_rng(0))
    episodes = [Episode("stuck", 50, 40), Episode("corr_break", 700, 50)]
    X = np.concatenate([plant.run(7, episodes)[0] for _ in range(120)])  # blocks of 7 rows
    flow, current = X[:, S["flow_m3h"]], X[:, S["motor_current_a"]]
    assert np.ptp(flow[50:90]) == 0 and flow[90] != flow[89]
    np.testing.assert_array_equal(current[700:750], current[700 - CORR_BREAK_LAG : 750 - CORR_BREAK_LAG])


def test_labels_mark_exactly_the_injected_rows():
    episodes = [Episode("offset", 100, 30), Episode("spikes", 300, 60), Episode("valve", 500, 40)]
    X, y = simulate(700, seed=5, episodes=episodes)
    clean, _ = simulate(700, seed=5)
    code = {f: FAMILIES.index(f) + 1 for f in FAMILIES}
    assert (y[100:130] == code["offset"]).all() and (y[500:540] == code["valve"]).all()
    spiked = np.flatnonzero(X[:500, S["motor_current_a"]] != clean[:500, S["motor_current_a"]])  # valve from 500
    np.testing.assert_array_equal(np.flatnonzero(y == code["spikes"]), spiked)  # only the spiked rows
    assert 0 < len(spiked) < 30
    assert (np.abs(X - clean)[spiked, S["motor_current_a"]] >= 6 * NOISE[S["motor_current_a"]]).all()
    assert (y[:100] == 0).all() and (y[130:300] == 0).all() and (y[540:] == 0).all()


def test_episode_size_scales_the_fault_height():
    X1, _ = simulate(300, seed=2, episodes=[Episode("offset", 100, 50)])
    X2, _ = simulate(300, seed=2, episodes=[Episode("offset", 100, 50, size=2.5)])
    clean, _ = simulate(300, seed=2)
    step = (X1 - clean)[100:150, S["pressure_out_bar"]]
    np.testing.assert_allclose(step, 8 * NOISE[S["pressure_out_bar"]])
    np.testing.assert_allclose((X2 - clean)[100:150, S["pressure_out_bar"]], 2.5 * step)


def test_the_benchmark_data_are_fixed_by_the_seed():
    """benchmarks/sensor_quality.py's data: one seed, one sequence (a refactor must not move its figures)."""
    n = 10_400
    X, y = simulate(n, 0, schedule(n, 5000, np.random.default_rng(1000)))
    again, _ = simulate(n, 0, schedule(n, 5000, np.random.default_rng(1000)))
    np.testing.assert_array_equal(X, again)
    assert np.bincount(y, minlength=len(FAMILIES) + 1)[1:].tolist() == [240, 240, 240, 54, 240, 240, 240, 240]
    first_three = [[1480.8578, 151.3358, 0.953], [1179.1103, 130.842, 0.9452], [1317.9436, 122.335, 1.0261]]
    np.testing.assert_allclose(X[[0, 5000, 10_399], :3], first_three, atol=1e-4)


def test_narrow_and_wide_vectors_pick_documented_channels():
    assert channel_sensors(13).tolist() == list(range(13))
    assert {SENSORS[i] for i in channel_sensors(4)} == set(PRIORITY[:4])
    wide = channel_sensors(20)
    assert wide[:13].tolist() == list(range(13)) and wide[13:].tolist() == list(range(7))  # redundant transmitters
    narrow = SensorMachine("m", seed=1, fault_rate=0.2, n_features=2)
    assert set(narrow.faults) == {"offset", "stuck", "cavitation", "valve"}  # those that change flow or p_out
    with pytest.raises(ValueError, match="changes the 2 channels"):
        SensorMachine("m", fault_rate=0.1, faults=["drift"], n_features=2)


# ------------------------------------------------------------------ the live lines


@pytest.fixture(scope="module")
def faulty_run() -> tuple[np.ndarray, np.ndarray]:
    return _run(LineSimulator(lines=2, machines=2, cameras=0, n_features=13, fault_rate=0.05, seed=1), 3000)


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


def test_machines_are_sister_pumps_not_copies():
    a, b = LineSimulator(lines=1, machines=2, cameras=0, n_features=13, fault_rate=0.0, seed=2).machines
    assert a.plant.pump != b.plant.pump
    xa, xb = np.stack([s.values for s in a.take(2000)]), np.stack([s.values for s in b.take(2000)])
    assert np.abs(xa.mean(0) - xb.mean(0)).max() / xa.std(0).max() < 0.5  # one model can serve both


def test_training_data_matches_the_simulated_fleet():
    X, images = training_samples(2000, 6, n_features=13, image_size=32, seed=5)
    assert X.shape == (2000, 13) and X.dtype == np.float32 and np.isfinite(X).all()
    assert images.shape == (6, 32, 32) and images.dtype == np.uint8
    live, truth = _run(LineSimulator(lines=2, machines=2, cameras=0, n_features=13, fault_rate=0.0, seed=5), 500)
    assert (truth == NORMAL).all()
    # same machines: the live operating point sits inside the training spread, channel by channel
    z = np.abs(live.mean(0) - X.mean(0)) / X.std(0)
    assert z.max() < 1.0
    np.testing.assert_array_equal(normal_vectors(10, seed=5), normal_vectors(10, seed=5))


def test_all_families_occur_at_about_the_requested_rate(faulty_run):
    _, truth = faulty_run
    assert set(truth) == {NORMAL, *SENSOR_FAULTS}
    assert 0.035 < (truth != NORMAL).mean() < 0.065
    clean = _run(LineSimulator(lines=1, machines=1, cameras=0, fault_rate=0.0, seed=1), 2000)[1]
    assert (clean == NORMAL).all()


def test_live_labels_match_the_injected_faults():
    """Same machine with and without faults: readings differ on exactly the labelled events, in the
    family's sensor only."""
    kw = {"seed": 4, "n_features": 13, "faults": ("offset", "corr_break")}
    faulty = SensorMachine("line-1/press-1", fault_rate=0.1, **kw).take(3000)
    clean = SensorMachine("line-1/press-1", fault_rate=0.0, **kw).take(3000)
    diff = np.stack([f.values for f in faulty]) != np.stack([c.values for c in clean])
    truth = np.array([f.truth for f in faulty])
    assert set(truth) == {NORMAL, "offset", "corr_break"}
    np.testing.assert_array_equal(diff.any(axis=1), truth != NORMAL)
    assert not diff[truth == "offset"][:, np.arange(13) != S["pressure_out_bar"]].any()
    assert not diff[truth == "corr_break"][:, np.arange(13) != S["motor_current_a"]].any()


def test_drift_moves_the_operating_point():
    steady = SensorMachine("m", seed=0, n_features=13).take(3000)
    drifting = SensorMachine("m", seed=0, n_features=13, drift=2.0).take(3000)
    late = slice(2500, 3000)
    shift = np.stack([s.values for s in drifting[late]]).mean(0) - np.stack([s.values for s in steady[late]]).mean(0)
    assert np.linalg.norm(shift / normal_spread()) > 4.0  # ~5.5 spreads after 2750 events at 2 per 1000


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="fault_rate"):
        SensorMachine("m", fault_rate=0.9)
    with pytest.raises(ValueError, match="unknown faults"):
        SensorMachine("m", faults=["melt"])


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
