"""A model version no threshold can start from (missing or non-finite calibration) is refused at load."""

from __future__ import annotations

import numpy as np

from models import RVAEScorer
from stream_app.registry.versions import Registry
from stream_app.scoring.model_manager import ModelManager


def fitted(seed: int = 0) -> RVAEScorer:
    scorer = RVAEScorer(n_features=3, n_layers=1, hidden=8, latent=2, device="cpu", seed=seed)
    scorer.fit(np.random.default_rng(seed).normal(size=(200, 3)).astype(np.float32), epochs=1)
    return scorer


async def test_a_version_with_nan_calibration_is_refused_and_the_current_one_keeps_serving(tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.promote("sensors", registry.publish("sensors", fitted()).version)
    manager = ModelManager(registry, device="cpu")
    assert (await manager.get("sensors")).version == "0001"

    broken = fitted(seed=1)
    broken.calibration_scores = np.full(10, np.nan, np.float32)
    registry.promote("sensors", registry.publish("sensors", broken).version, force=True)
    result = await manager.apply_update({"model": "sensors", "version": "0002"})
    assert result.loaded is None and "finite" in result.detail
    assert (await manager.get("sensors")).version == "0001"
