"""One batch through the in-process pipeline (real Redis): incidents open and close on the alerts topic."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import redis_client
from stream_app.ops.metrics import WorkerMetrics
from stream_app.registry.versions import Registry
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.model_manager import ModelManager
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.settings import Route
from stream_app.wire.codecs import encode_vector
from stream_app.wire.records import Record
from tests.integration.test_worker import fit_sensor_model, normal_vectors

pytestmark = pytest.mark.integration


async def test_an_incident_opens_and_closes_on_the_alerts_topic(make_settings):
    settings = make_settings(routes=[Route(pattern="*", model="sensors")])
    fit_sensor_model(settings)
    rows = normal_vectors(np.random.default_rng(5), 60)
    rows[10:16, 2] += 50.0  # six clear anomalies in a row: k of n opens the incident
    records = [
        Record(settings.topics.vectors, 0, i, b"line-1/m", encode_vector("line-1/m", row, ts=1000.0 + i))
        for i, row in enumerate(rows)
    ]
    redis = redis_client(settings.redis)
    executor = InferenceExecutor()
    try:
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        models = ModelManager(Registry(settings.registry_dir), device="cpu", executor=executor.pool)
        pipeline = InspectionPipeline(settings, models, store, executor, WorkerMetrics())
        outputs, report = await pipeline.process("vectors", records)
    finally:
        executor.close()
        await redis.aclose()
    alerts = [orjson.loads(o.value) for o in outputs if o.topic == settings.topics.alerts]
    events = [a["incident_event"] for a in alerts if a["incident_event"]]
    assert events == ["opened", "closed"]
    opened, closed = (next(a for a in alerts if a["incident_event"] == e) for e in events)
    assert opened["incident_id"] == closed["incident_id"] and closed["score"] <= closed["threshold"]
    assert report.alerts == sum(a["score"] > a["threshold"] for a in alerts) == len(alerts) - 1
