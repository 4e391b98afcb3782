"""A small, realistic scene for the console's browser tests, screenshots and load benchmark.

Everything is written with the pipeline's own builders (`wire.outputs`), so the console reads exactly the
messages a worker would publish: verdicts on the scores topic, alerts on the alerts topic (vector alerts
with top sensors; image alerts whose `origin` points at a real frame on the frames topic), and a registry
with real fitted versions and validation numbers computed by `retraining.decision.decide`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from stream_app.judging.incidents import incident_id as make_incident_id
from stream_app.judging.store import Judgement, severity
from stream_app.registry.versions import ModelVersion, Registry
from stream_app.settings import Settings
from stream_app.wire.codecs import FrameEvent, VectorEvent, encode_image, encode_vector, frame_headers
from stream_app.wire.ids import alert_id
from stream_app.wire.outputs import Output, alert_output, coarse_grid, top_features, verdict_output
from stream_app.wire.records import Record

FEATURES = ["temp_c", "pressure_bar", "vibration_mm_s", "current_a", "speed_rpm", "torque_nm"]


@dataclass(frozen=True)
class SceneModel:
    """The served model version the scene's verdicts and alerts name (a `wire.outputs.ModelId`)."""

    name: str
    version: str
    flags: tuple[str, ...] = ()


async def send(producer: AIOKafkaProducer, outputs: Sequence[Output], timestamp_ms: int | None = None) -> None:
    """Send outputs (stamped `timestamp_ms`, default now) and wait for every ack."""
    futures = [
        await producer.send(o.topic, key=o.key, value=o.value, headers=o.headers, timestamp_ms=timestamp_ms)
        for o in outputs
    ]
    for f in futures:
        await f


def verdicts(
    settings: Settings, source: str, scores: Sequence[float], threshold: float, model: str, version: str,
    incident: str | None = None, first_offset: int = 0,
) -> list[Output]:  # fmt: skip
    """Verdicts for consecutive input offsets of `source` (anomalous = score above `threshold`)."""
    now = time.time()
    served = SceneModel(model, version)
    event = VectorEvent(source, now, np.zeros(0, np.float32))  # a verdict reads only the source and ts
    out = []
    for i, score in enumerate(scores):
        rec = Record(settings.topics.vectors, 0, first_offset + i, source.encode(), b"")
        judgement = Judgement(
            source, float(score), threshold, float(score) > threshold, severity(score, threshold), incident, None
        )
        out.append(verdict_output(settings.topics.scores, rec, event, served, judgement))
    return out


async def vector_alert(
    producer: AIOKafkaProducer, settings: Settings, source: str, score: float, threshold: float, model: str,
    version: str, event: str | None = "opened", seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Publish a sensor vector whose `vibration_mm_s` and `temp_c` broke away, then the alert a worker would
    raise on it (top sensors explained); returns the alert."""
    rng = np.random.default_rng(seed)
    values = np.array([61.5, 4.1, 9.8, 12.2, 1480.0, 33.0]) + rng.normal(0, 0.2, 6)
    contributions = np.array([2.1, 0.2, 7.4, 0.6, 0.1, 0.9]) * (score / max(threshold, 1e-9))
    meta = await (
        await producer.send(settings.topics.vectors, key=source.encode(), value=encode_vector(source, values.tolist()))
    )
    rec = Record(meta.topic, meta.partition, meta.offset, source.encode(), b"")
    inc = make_incident_id(source, alert_id(meta.topic, meta.partition, meta.offset))
    out = alert_output(
        settings.topics.alerts, rec, VectorEvent(source, time.time(), values.astype(np.float32)),
        SceneModel(model, version), Judgement(source, score, threshold, True, score / threshold, inc, event),
        kind="sensor", explanation=top_features(contributions, values, FEATURES, k=4),
    )  # fmt: skip
    await send(producer, [out])
    return orjson.loads(out.value)


def defect_frame(size: int = 192, peak: tuple[int, int] = (5, 2), cells: int = 8, seed: int = 0):
    """A grey brushed-metal frame with a dark scratch in grid cell `peak`, and a heatmap that finds it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 150 + 25 * np.sin(xx / 3.0 + rng.normal(0, 0.3, (size, 1))) + rng.normal(0, 6, (size, size))
    cy, cx = (peak[0] + 0.5) * size / cells, (peak[1] + 0.5) * size / cells
    scratch = np.exp(-(((yy - cy) * 0.9 + (xx - cx) * 0.45) ** 2) / 8.0) * np.exp(-((xx - cx) ** 2) / 300.0)
    image = np.clip(base - 120 * scratch, 0, 255).astype(np.uint8)
    patches = 16
    py, px = np.mgrid[0:patches, 0:patches]
    heat = np.exp(-(((py + 0.5) * size / patches - cy) ** 2 + ((px + 0.5) * size / patches - cx) ** 2) / 600.0)
    heat = (heat + 0.05 * rng.random((patches, patches))).astype(np.float32)
    return image, coarse_grid(heat, cells)


async def image_alert(
    producer: AIOKafkaProducer, settings: Settings, source: str, score: float, threshold: float, model: str,
    version: str, peak: tuple[int, int] = (5, 2), event: str | None = "opened",
) -> dict[str, Any]:  # fmt: skip
    """Publish a camera frame, then the alert a worker would raise on it; returns the alert."""
    image, grid = defect_frame(peak=peak)
    meta = await (
        await producer.send(
            settings.topics.frames, key=source.encode(), value=encode_image(image), headers=frame_headers(source)
        )
    )
    rec = Record(meta.topic, meta.partition, meta.offset, source.encode(), b"")
    inc = make_incident_id(source, alert_id(meta.topic, meta.partition, meta.offset))
    out = alert_output(
        settings.topics.alerts, rec, FrameEvent(source, time.time(), image), SceneModel(model, version),
        Judgement(source, score, threshold, True, score / threshold, inc, event), kind="image", explanation=grid,
    )  # fmt: skip
    await send(producer, [out])
    return orjson.loads(out.value)


def build_registry(settings: Settings, model: str = "sensors", versions: int = 2, seed: int = 0) -> list[ModelVersion]:
    """Fit `versions` tiny RVAE versions on correlated sensor data; the first is promoted, each later one is
    validated against it with the retraining rule (`decide`) and its numbers stored in the manifest."""
    from models import RVAEScorer
    from stream_app.retraining.decision import CONFIRMED, calibrated_threshold, decide

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(2, len(FEATURES)))
    registry = Registry(settings.registry_dir)
    published: list[ModelVersion] = []
    current = None
    for v in range(versions):
        data = (rng.normal(size=(600, 2)) @ mix + 0.05 * rng.normal(size=(600, len(FEATURES)))).astype(np.float32)
        train, holdout = data[:480], data[480:]
        incidents = holdout[:20].copy()
        incidents[:, 2] += 6.0
        scorer = RVAEScorer(n_features=len(FEATURES), n_layers=1, hidden=16, latent=2, seed=seed + v, device="cpu")
        scorer.fit(train, epochs=3, batch_size=128)
        thr = calibrated_threshold(settings.thresholds, scorer.calibration_scores)
        cur_thr, cur_normal, cur_incidents = None, None, None
        if current is not None:
            cur_thr = calibrated_threshold(settings.thresholds, current.calibration_scores)
            cur_normal, cur_incidents = current.score(holdout), current.score(incidents)
        regression = {CONFIRMED: (scorer.score(incidents), cur_incidents)}
        decision = decide(settings.retrain, thr, scorer.score(holdout), regression, cur_thr, cur_normal)
        extra = {
            "parent": published[-1].version if published else None, "trained_by": "scene",
            "trigger": "initial" if not published else "schedule",
            "validation": {**decision.to_dict(), "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
        }  # fmt: skip
        mv = registry.publish(model, scorer, extra=extra)
        if not published:
            registry.promote(model, mv.version, force=True)  # the first version has nothing to beat
            current = scorer
        published.append(mv)
    return published
