"""One retraining cycle end to end on a temporary registry (window, labels and announcements stand in for Kafka):
what is promoted serves the threshold it was validated at, and a cycle's failures are recorded, not lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from models import RVAEScorer
from stream_app.registry.versions import Registry
from stream_app.retraining import agent as agent_module
from stream_app.retraining.agent import RetrainAgent
from stream_app.retraining.decision import calibrated_threshold
from stream_app.retraining.feedback import Feedback
from stream_app.retraining.window import TrainingWindow
from stream_app.settings import Settings

F = 3


@pytest.fixture
def cycle(tmp_path: Path, monkeypatch):
    """A production RVAE, and a window whose newest slice holds 4 lone alarms (0.8%, within the false-alarm
    bound, kept by design) and whose closed incident is a confirmed fault the candidate must still flag."""
    settings = Settings(registry_dir=tmp_path / "registry", state_dir=tmp_path / "state")
    settings.retrain.epochs = 3
    rng = np.random.default_rng(0)
    production = RVAEScorer(n_features=F, n_layers=1, hidden=8, latent=2, device="cpu")
    production.fit(rng.normal(size=(3000, F)).astype(np.float32), epochs=3)
    registry = Registry(settings.registry_dir)
    registry.promote("press", registry.publish("press", production).version)
    holdout = rng.normal(size=(500, F)).astype(np.float32)
    holdout[:4, 0] += 40.0
    confirmed = rng.normal(size=(50, F)).astype(np.float32)
    confirmed[:, 1] += 8.0
    window = TrainingWindow(
        topic="t", model="press", kind="vectors", guard=True, train=rng.normal(size=(2000, F)).astype(np.float32),
        holdout=holdout, incidents=confirmed, incident_ids=["inc-1"] * 50, closed=np.ones(50, bool),
    )  # fmt: skip
    announced: list[str] = []

    async def read_window(*args, **kwargs) -> TrainingWindow:
        return window

    async def operator_feedback(*args, **kwargs) -> Feedback:
        return Feedback()

    async def announce_version(settings, registry, mv) -> dict:
        announced.append(mv.version)
        return {"version": mv.version}

    monkeypatch.setattr(agent_module, "read_window", read_window)
    monkeypatch.setattr(agent_module, "operator_feedback", operator_feedback)
    monkeypatch.setattr(agent_module, "announce_version", announce_version)
    return settings, registry, confirmed, announced, monkeypatch


def test_the_promoted_version_serves_the_threshold_it_was_validated_at(cycle) -> None:
    settings, registry, confirmed, _, _ = cycle
    result = asyncio.run(RetrainAgent(settings, progress=False).run_cycle("press"))
    assert result.decision == "promoted", result.reason
    validated = result.metrics["validation"]["candidate_threshold"]
    _, served = registry.load("press")
    served_threshold = calibrated_threshold(settings.thresholds, served.calibration_scores)
    assert served_threshold == pytest.approx(validated, rel=1e-6)
    assert float(np.mean(served.score(confirmed) > served_threshold)) >= 0.9  # the fault is still flagged


def test_an_announcement_that_keeps_failing_after_promotion_is_recorded(cycle) -> None:
    """Production has moved (validated, compare-and-set): the cycle says so and that workers were not told, and
    workers find the version at their next check of the production pointer."""
    settings, registry, _, _, monkeypatch = cycle
    settings.retrain.announce_attempts = 2

    async def broker_down(*args, **kwargs) -> dict:
        raise ConnectionError("broker down")

    monkeypatch.setattr(agent_module, "announce_version", broker_down)
    agent = RetrainAgent(settings, progress=False)
    result = asyncio.run(agent.run_cycle("press"))
    assert registry.production("press").version == result.version == "0002"
    assert result.decision == "promoted" and result.announced is None
    assert "not announced" in result.reason and "broker down" in result.reason and agent.results == [result]


def test_a_cycle_that_raises_after_reading_its_window_is_recorded_as_failed(cycle) -> None:
    settings, registry, _, _, _ = cycle
    folder = settings.state_dir / "regression" / "press"
    folder.mkdir(parents=True)
    (folder / "events.safetensors").write_bytes(b"not a safetensors file")
    agent = RetrainAgent(settings, progress=False)
    result = asyncio.run(agent.run_cycle("press"))
    assert result.decision == "failed" and agent.results == [result] and registry.production("press").version == "0001"
    assert "regression" in result.reason or "safetensors" in result.reason.lower(), result.reason
