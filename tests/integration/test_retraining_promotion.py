"""Promotion is a compare-and-set: a candidate validated against one production version is never promoted
over another one (real Kafka for the window; the fit is a real RVAE)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models import RVAEScorer
from stream_app.retraining.agent import RetrainAgent
from tests.integration.test_retraining import MODEL, F, fit_v1, judged_events, retrain_settings
from tests.integration.test_training_window import produce_judged

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def v1_scorer() -> RVAEScorer:
    X = np.random.default_rng(0).normal(size=(1500, F)).astype(np.float32)
    scorer = RVAEScorer(F, n_layers=1, hidden=32, latent=2, device="cpu")
    scorer.fit(X, epochs=8, batch_size=128)
    return scorer


async def window(settings, v1) -> None:
    rng = np.random.default_rng(1)  # the drift that tests/test_retraining.py shows is promoted
    shift, scale = np.array([1.2, -1.0, 0.0, 0.8]), np.array([1.5, 1.0, 1.0, 1.3])
    X = (rng.normal(size=(1200, F)) * scale + shift).astype(np.float32)
    await produce_judged(settings, judged_events(settings, v1, X, time.time() - 200))


async def test_production_moving_during_the_fit_means_validation_against_the_new_one(
    make_settings, monkeypatch, v1_scorer
) -> None:
    settings = make_settings(retrain=retrain_settings(min_samples=100))
    registry, v1 = fit_v1(settings, v1_scorer)
    await window(settings, v1)
    original = RVAEScorer.fit

    def fit_while_someone_promotes(self, *args, **kwargs):
        history = original(self, *args, **kwargs)
        registry.promote(MODEL, registry.publish(MODEL, v1_scorer, extra={"parent": "0001"}).version)
        return history

    monkeypatch.setattr(RVAEScorer, "fit", fit_while_someone_promotes)
    result = await RetrainAgent(settings, progress=False).run_cycle(MODEL, trigger="test")
    manifest = registry.manifest(MODEL, result.version)
    assert manifest["parent"] == "0001" and manifest["validation"]["validated_against"] == "0002"
    if result.decision == "promoted":
        assert registry.production(MODEL).version == result.version
    else:
        assert registry.production(MODEL).version == "0002"


async def test_production_moving_after_validation_leaves_the_candidate_unpromoted(make_settings, v1_scorer) -> None:
    settings = make_settings(retrain=retrain_settings(min_samples=100))
    registry, v1 = fit_v1(settings, v1_scorer)
    await window(settings, v1)
    agent = RetrainAgent(settings, progress=False)
    publish = agent.registry.publish

    def publish_then_someone_promotes(model, scorer, extra=None):
        mv = publish(model, scorer, extra)
        agent.registry.promote(model, publish(model, v1_scorer, {"parent": "0001"}).version)
        return mv

    agent.registry.publish = publish_then_someone_promotes  # type: ignore[method-assign]
    result = await agent.run_cycle(MODEL, trigger="test")
    assert result.decision == "passed", result.reason  # validated against 0001, which no longer serves
    assert "not promoted" in result.reason and "production is 0003, not 0001" in result.reason
    assert registry.production(MODEL).version == "0003" and result.announced is None
