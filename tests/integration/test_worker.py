"""The inspection worker on the real stack: a worker subprocess, real topics, real Redis thresholds."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models import RVAEScorer
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records
from stream_app.ops.processes import running, worker_health, worker_ports
from stream_app.registry.versions import Registry
from stream_app.settings import Route, Settings
from stream_app.wire.codecs import encode_image, encode_vector, frame_headers

pytestmark = pytest.mark.integration
F = 6


def normal_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    latent = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.5, -0.3, 0.8, 0.0, 0.2], [0.0, 0.7, 0.9, -0.4, 1.0, 0.3]])
    return (latent @ mix + 0.05 * rng.normal(size=(n, F)) + 10.0).astype(np.float32)


def fit_sensor_model(settings: Settings, seed: int = 0) -> RVAEScorer:
    scorer = RVAEScorer(n_features=F, n_layers=1, hidden=32, latent=2, seed=seed, device="cpu")
    scorer.fit(normal_vectors(np.random.default_rng(seed), 3000), epochs=40, batch_size=128)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)
    return scorer


async def consume_all(settings: Settings, topic: str, until, timeout_s: float = 90.0) -> list:
    """Records of `topic` from the beginning until `until(records)` holds or the timeout passes."""
    return await read_records(settings, topic, until, timeout_s)


def worker_settings(make_settings, tmp_path: Path) -> Settings:
    settings = make_settings(routes=[Route(pattern="line-*", model="sensors")])
    settings.metrics_port = 0
    settings.claim_check_dirs = [tmp_path]
    settings.batching.max_wait_ms = 20
    return settings


async def test_worker_scores_every_event_alerts_on_anomalies_and_dead_letters_bad_input(make_settings, tmp_path):
    settings = worker_settings(make_settings, tmp_path)
    settings.image_routes = [Route(pattern="*", model="sensors")]
    fit_sensor_model(settings)
    await ensure_topics(settings)
    rng = np.random.default_rng(1)
    normal = normal_vectors(rng, 400)
    anomalies = normal_vectors(rng, 20)
    anomalies[:, 2] += 8.0  # a correlated structure broken on one sensor, far outside normal
    bad = {
        "malformed_json": b"{oops",
        "bad_schema": orjson.dumps({"source": "line-1/m", "values": "x"}),
        "non_finite": b'{"source": "line-1/m", "values": [1, 2, 3, 4, 5, 1e39]}',
        "wrong_width": encode_vector("line-1/m", [1.0, 2.0]),
        "unknown_source": encode_vector("other/m", [1.0] * F),
    }
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        sent = []
        for i, row in enumerate(normal):
            sent.append((f"line-1/m{i % 2}", row, "normal"))
        for i, row in enumerate(anomalies):
            sent.insert(100 + i * 10, (f"line-1/m{i % 2}", row, "spike"))
        for source, row, truth in sent:
            await producer.send(
                settings.topics.vectors, key=source.encode(), value=encode_vector(source, row),
                headers=[("truth", truth.encode())],
            )  # fmt: skip
        for payload in bad.values():
            await producer.send(settings.topics.vectors, key=b"line-1/m0", value=payload)
        # A camera routed to the sensor model: refused by kind, not a crash.
        frame = encode_image(np.zeros((16, 16), np.uint8))
        await producer.send(settings.topics.frames, key=b"cam", value=frame, headers=frame_headers("line-1/cam"))
        bad["rejected_by_model"] = frame
        await producer.flush()

    with running(settings, "worker", "-l", "info") as proc:
        verdicts = await consume_all(settings, settings.topics.scores, lambda r: len(r) >= len(sent))
        dead = await consume_all(settings, settings.topics.deadletter, lambda r: len(r) >= len(bad))
        alerts = await consume_all(
            settings, settings.topics.alerts, lambda r: any(dict(a.headers).get("truth") == b"spike" for a in r), 10
        )
        ports = worker_ports(settings)
        metrics = ""
        if ports:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5).read().decode()
            health = worker_health(ports[0])
        assert proc.poll() is None, "the worker must survive bad input"

    # Every good event has exactly one verdict.
    bodies = [orjson.loads(r.value) for r in verdicts]
    assert len(bodies) == len(sent)
    assert len({(b["partition"], b["offset"]) for b in bodies}) == len(sent)
    truth = [dict(r.headers)["truth"].decode() for r in verdicts]
    flagged = np.array([b["anomalous"] for b in bodies])
    is_fault = np.array([t != "normal" for t in truth])
    assert flagged[is_fault].mean() >= 0.9, "injected anomalies must be flagged"
    # Configured risk 1e-3 per event; tolerance for 400 events and a tail fitted on ~300 calibration scores.
    assert flagged[~is_fault].mean() <= 0.01, f"normal events alert at {flagged[~is_fault].mean():.3f}"
    assert {b["model"] for b in bodies} == {"sensors"} and {b["version"] for b in bodies} == {"0001"}

    # Dead letters keep the original bytes and say why.
    reasons = {dict(r.headers)["reason"].decode(): r.value for r in dead}
    assert reasons == bad

    # Alerts follow the contract and explain themselves.
    injected = [a for a in alerts if dict(a.headers).get("truth") == b"spike"]  # (a rare false alarm may come first)
    alert = orjson.loads(injected[0].value)
    for field in ("alert_id", "incident_id", "source", "kind", "ts", "detected_at", "score", "threshold",
                  "severity", "model", "version", "explanation", "origin"):  # fmt: skip
        assert field in alert
    assert alert["kind"] == "sensor" and alert["score"] > alert["threshold"]
    assert alert["explanation"]["top_features"][0]["feature"] == "f2"

    assert ports, "the worker writes its metrics port"
    assert 'linewatch_deadletters_total{reason="malformed_json"} 1.0' in metrics
    assert "linewatch_batch_size_bucket" in metrics and "linewatch_threshold" in metrics
    assert health["ok"] and health["models"] == {"sensors": "0001"}


async def test_redelivered_events_get_the_same_alert_ids(make_settings, tmp_path):
    """At-least-once: a second worker group re-reading the topic produces identical alert ids (faust path, then
    the getmany path)."""
    settings = worker_settings(make_settings, tmp_path)
    fit_sensor_model(settings)
    await ensure_topics(settings)
    rows = normal_vectors(np.random.default_rng(3), 60)
    rows[::10, 0] += 10.0
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        for row in rows:
            await producer.send(settings.topics.vectors, key=b"line-2/a", value=encode_vector("line-2/a", row))
        await producer.flush()

    def anomaly_ids(records: list) -> list[str]:
        """Alert ids of anomalies (an incident's closing record depends on the incident state left in Redis)."""
        bodies = [orjson.loads(r.value) for r in records]
        return [b["alert_id"] for b in bodies if b["incident_event"] != "closed"]

    ids: list[list[str]] = []
    for run in range(2):
        replay = settings.model_copy(update={"app_id": f"{settings.app_id}-{run}"}, deep=True)
        replay.batching.consumer = ("faust", "getmany")[run]  # both consumer paths, same ids
        want = 6 if run == 0 else 2 * len(ids[0])
        with running(replay, "worker"):
            alerts = await consume_all(replay, replay.topics.alerts, lambda r, n=want: len(anomaly_ids(r)) >= n)
        ids.append(anomaly_ids(alerts))
    assert len(ids[0]) >= 6
    assert len(ids[1]) == 2 * len(ids[0]) and set(ids[1]) == set(ids[0])
