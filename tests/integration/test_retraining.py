"""Retraining agent on the real stack: drift -> validated, promoted, announced; poisoning rejected; safety."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest

from models import ModelIntegrityError, RVAEScorer
from stream_app.ops.connections import read_records
from stream_app.registry.versions import Registry
from stream_app.retraining.agent import RetrainAgent, control_message, next_run, parse_control, send_trigger
from stream_app.retraining.decision import calibrated_threshold
from stream_app.scoring.model_manager import ModelManager
from stream_app.settings import RetrainSchedule, RetrainSettings, Settings
from tests.integration.test_training_window import Event, produce_judged

F = 4
MODEL = "sensors"


def retrain_settings(**kw) -> RetrainSettings:
    # Canaries at 8 robust sigmas: a candidate refitted on ~600 rows calibrates on ~60 held-out scores, and its
    # threshold extrapolated to risk 1e-3 from so few sits high (6-sigma offsets: 0.87 vs 1.0 for version 1).
    base = dict(window_s=3600, min_samples=100, epochs=8, guard_margin_events=10, guard_margin_s=0.0,
                max_false_alarm_rate=0.03, detection_tolerance=0.1, canary_sigma=8.0)  # fmt: skip
    return RetrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def v1_scorer() -> RVAEScorer:
    """Version 1, trained once per module on the original normal data N(0, 1)."""
    X = np.random.default_rng(0).normal(size=(1500, F)).astype(np.float32)
    scorer = RVAEScorer(F, n_layers=1, hidden=32, latent=2, device="cpu")
    scorer.fit(X, epochs=8, batch_size=128)
    return scorer


def fit_v1(settings: Settings, scorer: RVAEScorer) -> tuple[Registry, RVAEScorer]:
    """Publish and promote version 1 in this test's registry."""
    registry = Registry(settings.registry_dir)
    registry.promote(MODEL, registry.publish(MODEL, scorer, extra={"parent": None}).version)
    return registry, scorer


def judged_events(settings: Settings, scorer: RVAEScorer, X: np.ndarray, t0: float, sources=("a", "b")) -> list[Event]:
    """Events judged by `scorer` at its calibrated threshold, as a worker on that version would."""
    thr = calibrated_threshold(settings.thresholds, scorer.calibration_scores)
    flags = scorer.score(X) > thr
    return [Event(sources[i % len(sources)], X[i].tolist(), t0 + i * 0.1, bool(flags[i])) for i in range(len(X))]


def incident(source: str, n: int, t0: float, rng: np.random.Generator) -> list[Event]:
    X = rng.normal(size=(n, F)) + np.array([8.0, -8.0, 0, 0])
    return [Event(source, X[i].tolist(), t0 + i * 0.1, True, "inc-1") for i in range(n)]


async def run_until_first_result(agent: RetrainAgent, timeout_s: float = 10.0) -> None:
    """Run the agent's triggers until it finished one cycle (or the timeout), then cancel it."""
    runner = asyncio.create_task(agent.run())
    try:
        for _ in range(int(timeout_s / 0.1)):
            if agent.results:
                break
            await asyncio.sleep(0.1)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def model_updates(settings: Settings) -> list[dict]:
    """Every model-updates message so far (reads the topic for 3 s)."""
    records = await read_records(settings, settings.topics.model_updates, lambda r: False, timeout_s=3.0)
    values = [orjson.loads(m.value) for m in records]
    return values


# ----------------------------------------------------------------------------- pure parts


def test_next_run_follows_cron_in_utc_and_intervals():
    assert next_run(RetrainSchedule(model="m", cron="*/15 * * * *"), 60.0) == 900.0
    assert next_run(RetrainSchedule(model="m", interval_s=30), 100.0) == 130.0
    with pytest.raises(ValueError, match="neither cron nor interval_s"):
        next_run(RetrainSchedule(model="m"), 0.0)


def test_control_messages_older_than_the_max_age_or_of_other_actions_are_ignored():
    assert parse_control(orjson.dumps(control_message("m", 1000.0)), now=1010.0, max_age_s=60) == "m"
    with pytest.raises(ValueError, match="older than"):
        parse_control(orjson.dumps(control_message("m", 1000.0)), now=2000.0, max_age_s=60)
    with pytest.raises(ValueError, match="not a retrain request"):
        parse_control(b'{"action": "stop"}', now=0, max_age_s=60)
    with pytest.raises(ValueError, match="not JSON"):
        parse_control(b"{", now=0, max_age_s=60)


# ----------------------------------------------------------------------------- real stack


@pytest.mark.integration
async def test_retrain_on_drifted_normal_traffic_publishes_a_validated_version_that_is_promoted_and_announced(
    make_settings, v1_scorer
):
    settings = make_settings(retrain=retrain_settings())
    registry, v1 = fit_v1(settings, v1_scorer)
    rng = np.random.default_rng(1)
    shift, scale = np.array([1.2, -1.0, 0.0, 0.8]), np.array([1.5, 1.0, 1.0, 1.3])
    drifted = (rng.normal(size=(1200, F)) * scale + shift).astype(np.float32)
    now = time.time()
    events = judged_events(settings, v1, drifted, now - 200)
    far_v1 = np.mean([e.anomalous for e in events])
    await produce_judged(settings, events + incident("a", 30, now - 5, rng))

    result = await RetrainAgent(settings, progress=False).run_cycle(MODEL, trigger="test")

    assert result.decision == "promoted", result.reason
    assert (result.version, result.parent) == ("0002", "0001")
    assert registry.production(MODEL).version == "0002"
    manifest = registry.manifest(MODEL, "0002")
    assert manifest["parent"] == "0001" and manifest["validation"]["decision"] == "passed"
    assert manifest["training_window"]["counts"]["incidents"] == 30 and manifest["metrics"]["fit"]["epochs_run"] >= 1
    metrics = result.metrics["validation"]
    assert metrics["false_alarm_rate"] <= settings.retrain.max_false_alarm_rate < far_v1
    for name, row in metrics["regression"].items():  # confirmed (none closed in this window) and canaries
        assert not row["events"] or row["detection_rate"] >= row["current_detection_rate"] - 0.1, name
    assert "canaries only" in result.reason and manifest["validation"]["validated_against"] == "0001"
    _, v2 = registry.load(MODEL)
    fresh = (rng.normal(size=(2000, F)) * scale + shift).astype(np.float32)
    far_after = np.mean(v2.score(fresh) > calibrated_threshold(settings.thresholds, v2.calibration_scores))
    print(f"false-alarm rate on drifted data: v1 {far_v1:.3f}, v2 {far_after:.3f}")
    assert far_after < far_v1 / 2
    updates = await model_updates(settings)
    assert [(u["model"], u["version"]) for u in updates] == [(MODEL, "0002")]
    assert updates[0]["sha256"] == registry.digest(MODEL, "0002")


@pytest.mark.integration
async def test_candidate_trained_on_poisoned_window_without_guard_fails_validation(make_settings, v1_scorer):
    settings = make_settings(retrain=retrain_settings())
    registry, v1 = fit_v1(settings, v1_scorer)
    rng = np.random.default_rng(2)
    now = time.time()
    normal = judged_events(settings, v1, rng.normal(size=(900, F)).astype(np.float32), now - 300)
    poison = [e for k in range(6) for e in incident("ab"[k % 2], 60, now - 295 + k * 14, rng)]  # interleaved
    await produce_judged(settings, normal + poison)
    agent = RetrainAgent(settings, progress=False)

    poisoned = await agent.run_cycle(MODEL, trigger="test", guard=False)
    assert poisoned.decision == "rejected", poisoned.reason
    assert registry.production(MODEL).version == "0001"
    audit = registry.manifest(MODEL, poisoned.version)["validation"]  # rejected candidates are kept for audit
    assert audit["decision"] == "rejected" and audit["reason"] == poisoned.reason
    assert poisoned.reason.startswith("regression: confirmed detection")
    assert audit["metrics"]["regression"]["confirmed"]["detection_rate"] < 0.5
    with pytest.raises(ValueError, match="failed validation"):
        registry.promote(MODEL, poisoned.version)

    guarded = await agent.run_cycle(MODEL, trigger="test")
    assert guarded.decision == "promoted", guarded.reason
    assert guarded.counts["train"] + guarded.counts["holdout"] < len(normal)


@pytest.mark.integration
async def test_a_fault_class_common_in_the_window_but_never_alarmed_is_caught_by_the_regression_set(
    make_settings, v1_scorer
):
    """The guard only drops what was alarmed: a fault the workers missed (e.g. while a bad threshold served)
    trains the candidate to call it normal. The confirmed events of an earlier incident of that fault class,
    kept in the model's regression set, reject that candidate."""
    from stream_app.retraining.regression import RegressionSet

    settings = make_settings(retrain=retrain_settings())
    registry, v1 = fit_v1(settings, v1_scorer)
    rng = np.random.default_rng(4)
    earlier = np.array([e.values for e in incident("a", 40, 0.0, rng)], np.float32)
    RegressionSet(settings.state_dir, MODEL).add(earlier, ["inc-earlier"] * len(earlier))
    now = time.time()
    normal = judged_events(settings, v1, rng.normal(size=(900, F)).astype(np.float32), now - 300)
    missed = [Event(e.source, e.values, e.ts, False) for e in incident("b", 300, now - 200, rng)]  # judged normal
    await produce_judged(settings, normal + missed)

    blind = await RetrainAgent(settings, progress=False).run_cycle(MODEL, trigger="test")
    assert blind.decision == "rejected", blind.reason
    confirmed = registry.manifest(MODEL, blind.version)["validation"]["metrics"]["regression"]["confirmed"]
    # The regression set alone rejects it (the decision names the first failed check, here the held-back data,
    # where the missed faults, judged normal, make the candidate look noisy).
    assert confirmed["detection_rate"] < confirmed["current_detection_rate"] - settings.retrain.detection_tolerance
    assert registry.production(MODEL).version == "0001"


@pytest.mark.integration
async def test_too_little_clean_data_or_a_failed_fit_leaves_the_registry_unchanged(
    make_settings, monkeypatch, v1_scorer
):
    settings = make_settings(retrain=retrain_settings(min_samples=50))
    registry, v1 = fit_v1(settings, v1_scorer)
    agent = RetrainAgent(settings, progress=False)
    skipped = await agent.run_cycle(MODEL)
    assert skipped.decision == "skipped" and "min_samples" in skipped.reason

    await produce_judged(settings, judged_events(settings, v1, np.zeros((200, F), np.float32), time.time() - 60))

    class Exploding(RVAEScorer):
        def fit(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    monkeypatch.setattr(
        "stream_app.retraining.agent.new_candidate", lambda prod, device=None: Exploding(F, device="cpu")
    )
    failed = await agent.run_cycle(MODEL)
    assert failed.decision == "failed" and "out of memory" in failed.reason
    assert registry.versions(MODEL) == ["0001"] and registry.production(MODEL).version == "0001"


@pytest.mark.integration
async def test_cancelled_fit_publishes_nothing(make_settings, monkeypatch, v1_scorer):
    settings = make_settings(retrain=retrain_settings(min_samples=50))
    registry, v1 = fit_v1(settings, v1_scorer)
    await produce_judged(settings, judged_events(settings, v1, np.zeros((200, F), np.float32), time.time() - 60))

    class Slow(RVAEScorer):
        def fit(self, *args, **kwargs):
            time.sleep(1.5)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr("stream_app.retraining.agent.new_candidate", lambda prod, device=None: Slow(F, device="cpu"))
    task = asyncio.create_task(RetrainAgent(settings, progress=False).run_cycle(MODEL))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.0)
    assert registry.versions(MODEL) == ["0001"]


@pytest.mark.integration
async def test_control_topic_trigger_runs_a_cycle(make_settings, v1_scorer):
    settings = make_settings(retrain=retrain_settings(min_samples=50))
    fit_v1(settings, v1_scorer)
    agent = RetrainAgent(settings, progress=False)
    await send_trigger(settings, MODEL)  # sent before the agent starts, within control_max_age_s
    await run_until_first_result(agent)
    assert [(r.model, r.trigger, r.decision) for r in agent.results] == [(MODEL, "control topic", "skipped")]


@pytest.mark.integration
async def test_a_scheduled_interval_runs_cycles(make_settings, v1_scorer):
    schedule = RetrainSchedule(model=MODEL, interval_s=0.2)
    settings = make_settings(retrain=retrain_settings(schedules=[schedule]))
    fit_v1(settings, v1_scorer)
    agent = RetrainAgent(settings, progress=False)
    await run_until_first_result(agent)
    assert agent.results[0].trigger == "schedule (every 0.2 s)" and agent.results[0].decision == "skipped"


async def test_tampered_weights_are_refused_and_the_worker_keeps_serving(tmp_path, v1_scorer):
    settings = Settings(registry_dir=tmp_path / "registry")
    registry, v1 = fit_v1(settings, v1_scorer)
    v2 = registry.publish(MODEL, v1, extra={"parent": "0001"})
    weights = v2.path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ModelIntegrityError, match="does not match manifest"):
        registry.load(MODEL, v2.version)
    manager = ModelManager(registry, device="cpu")
    assert (await manager.get(MODEL)).version == "0001"
    (registry.root / MODEL / "PRODUCTION").write_text(v2.version)  # promote refuses it; point at it by hand
    assert await manager.swap(MODEL, v2.version, sha256=registry.digest(MODEL, v2.version)) is None
    assert manager.current(MODEL).version == "0001" and "does not match" in manager.refused[-1][2]


@pytest.mark.integration
async def test_a_windowed_model_is_retrained_with_its_window_on_each_sources_rows_in_order(make_settings):
    from tests.integration.test_windowed_judging import sensor_sequence

    settings = make_settings(retrain=retrain_settings(keep_rejected=True, auto_promote=False))
    production = RVAEScorer(F, window=3, n_layers=1, hidden=16, latent=3, device="cpu")
    production.fit(sensor_sequence(800, seed=0), epochs=3)
    fit_v1(settings, production)
    now, series = time.time(), {src: sensor_sequence(300, seed=1 + i) for i, src in enumerate(("a", "b"))}
    events = [Event(src, series[src][i].tolist(), now - 100 + i * 0.1) for i in range(300) for src in series]
    await produce_judged(settings, events)

    result = await RetrainAgent(settings, progress=False).run_cycle(MODEL, trigger="test")
    assert result.decision in ("passed", "rejected") and result.version is not None, result.reason
    _, candidate = Registry(settings.registry_dir).load(MODEL, result.version, "cpu")
    assert candidate.window == 3 and result.counts["train"] + result.counts["holdout"] == 600
