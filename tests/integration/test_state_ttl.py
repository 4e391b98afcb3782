"""A source that goes silent loses its stored threshold state after the idle TTL (producers choose source names)."""

from __future__ import annotations

import asyncio

import numpy as np

from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import redis_client


async def test_source_state_expires_after_the_idle_ttl_and_a_new_judgement_starts_fresh(make_settings):
    settings = make_settings()
    redis = redis_client(settings.redis)
    try:
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix,
                               state_ttl_s=1.0)  # fmt: skip
        calibration = np.random.default_rng(0).exponential(size=500)
        await store.judge("m", "0001", calibration, ["src-a"], np.array([0.5]), ["id-1"])
        key = store.key("m", "0001", "src-a")
        assert 0 < await redis.pttl(key) <= 1000
        await asyncio.sleep(1.5)
        assert not await redis.exists(key), "an idle source's state must expire"
        store.forget("m", "src-a")
        (again,) = await store.judge("m", "0001", calibration, ["src-a"], np.array([0.5]), ["id-2"])
        assert not again.anomalous and await redis.exists(key)
    finally:
        await redis.aclose()
