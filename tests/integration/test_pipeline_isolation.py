"""Poison isolation and the source cap inside one pipeline batch, with real Redis thresholds."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from models import RVAEScorer
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import redis_client
from stream_app.ops.metrics import WorkerMetrics
from stream_app.registry.versions import Registry
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.model_manager import LoadedModel, ModelManager
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.wire.codecs import encode_vector
from stream_app.wire.records import Record

pytestmark = pytest.mark.integration
F = 4


class ChokesOn666:
    """A real scorer that raises on one crafted value, as a model bug would."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, X):
        if (X == 666.0).any():
            raise RuntimeError("index out of range in self")
        return self.inner.score(X)

    def score_sequences(self, pairs):  # a windowed model scores while judging: the same bug there
        if any((rows == 666.0).any() for _, rows in pairs):
            raise RuntimeError("index out of range in self")
        return self.inner.score_sequences(pairs)


@pytest.mark.parametrize("window", [1, 3])
async def test_one_poison_record_is_dead_lettered_and_the_rest_of_the_batch_is_scored(make_settings, window):
    settings = make_settings()
    settings.limits.max_sources_per_model = 3
    X = np.random.default_rng(0).normal(size=(256, F)).astype(np.float32)
    inner = RVAEScorer(n_features=F, n_layers=1, hidden=8, latent=2, window=window, device="cpu")
    inner.fit(X, epochs=2, batch_size=128)
    manager = ModelManager(Registry(settings.registry_dir))
    manager._serving["sensors"] = LoadedModel("sensors", "0001", ChokesOn666(inner))
    redis = redis_client(settings.redis)
    executor = InferenceExecutor()
    try:
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        pipeline = InspectionPipeline(settings, manager, store, executor, WorkerMetrics())
        values = X[:64].tolist()
        values[37] = [666.0] * F
        sources = [f"m{i % 3}" for i in range(64)]
        sources[50] = "m-new"  # a fourth source: over the cap of 3
        records = [
            Record("v", 0, i, b"k", encode_vector(s, v, ts=1.0), {})
            for i, (s, v) in enumerate(zip(sources, values, strict=True))
        ]
        outputs, report = await pipeline.process("vectors", records)
    finally:
        await redis.aclose()
        executor.close()
    assert report.deadletters == {"poison": 1, "source_limit": 1} and report.scored == 62
    dead = {
        dict(o.headers)["origin-offset"]: dict(o.headers)["reason"]
        for o in outputs
        if o.topic == settings.topics.deadletter
    }
    assert dead == {b"37": b"poison", b"50": b"source_limit"}
    verdicts = [orjson.loads(o.value) for o in outputs if o.topic == settings.topics.scores]
    for src in ("m0", "m1", "m2"):  # the others scored as their source's sequence, without the dead letters
        kept = [i for i in range(64) if sources[i] == src and i not in (37, 50)]
        got = [v["score"] for v in sorted(verdicts, key=lambda v: v["offset"]) if v["source"] == src]
        np.testing.assert_allclose(got, inner.score(np.asarray(values, np.float32)[kept]), rtol=1e-5, atol=1e-6)
