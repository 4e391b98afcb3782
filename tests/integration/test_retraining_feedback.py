"""Operators' labels reach retraining: a confirmed defect joins the regression set, a false alarm the training data."""

from __future__ import annotations

import time

import numpy as np

from models import RVAEScorer
from stream_app.alerts.labels import label_for_alert, publish_label
from stream_app.ops.connections import read_records
from stream_app.retraining.agent import RetrainAgent
from stream_app.retraining.regression import RegressionSet
from stream_app.wire.codecs import decode_vector
from tests.integration.test_retraining import MODEL, F, fit_v1, judged_events, retrain_settings
from tests.integration.test_training_window import Event, produce_judged


async def test_confirmed_defects_join_the_regression_set_and_false_alarms_the_training_data(make_settings, monkeypatch):
    settings = make_settings(retrain=retrain_settings())
    scorer = RVAEScorer(F, n_layers=1, hidden=32, latent=2, device="cpu")
    scorer.fit(np.random.default_rng(0).normal(size=(1500, F)).astype(np.float32), epochs=8, batch_size=128)
    _, v1 = fit_v1(settings, scorer)
    now = time.time()
    normal = judged_events(settings, v1, np.random.default_rng(1).normal(size=(400, F)).astype(np.float32), now - 100)
    defect = Event("a", [9.0, -9.0, 0.0, 0.0], now - 5, True)
    glare = Event("b", [0.5, 0.5, 0.5, 3.5], now - 4, True)
    await produce_judged(settings, [*normal, defect, glare])
    inputs = await read_records(settings, settings.topics.vectors, lambda r: len(r) >= len(normal) + 2, 30)
    record_of = {tuple(decode_vector(r.value).values.tolist()): r for r in inputs}
    for event, kind in ((defect, "real_defect"), (glare, "false_alarm")):  # what an operator clicks in the console
        rec = record_of[tuple(np.float32(event.values).tolist())]
        alert = {"alert_id": f"alert-{rec.partition}-{rec.offset}", "incident_id": None, "source": event.source,
                 "model": MODEL, "version": "0001", "ts": event.ts, "score": 9.0, "threshold": 3.0,
                 "origin": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}}  # fmt: skip
        await publish_label(settings, label_for_alert(alert, kind, "", "op"))

    trained_on: list[int] = []
    agent = RetrainAgent(settings, progress=False)
    fit = agent._fit

    async def spy(model, candidate, data):
        trained_on.append(len(data))
        return await fit(model, candidate, data)

    monkeypatch.setattr(agent, "_fit", spy)
    result = await agent.run_cycle(MODEL, trigger="test")
    assert trained_on == [result.counts["train"] + 1], "the false alarm is trained on as normal"
    events, ids = RegressionSet(settings.state_dir, MODEL).load((F,))
    defect_rec = record_of[tuple(np.float32(defect.values).tolist())]
    assert [i for i in ids if i.startswith("label:")] == [f"label:alert-{defect_rec.partition}-{defect_rec.offset}"]
    assert events is not None and np.allclose(
        events[ids.index(f"label:alert-{defect_rec.partition}-{defect_rec.offset}")], defect.values
    )


async def test_models_label_publishes_a_label_for_an_alert_on_the_topic_and_refuses_unknown_ids(
    make_settings, tmp_path
):
    import asyncio

    from typer.testing import CliRunner

    from stream_app.alerts.labels import read_labels
    from stream_app.cli import app
    from stream_app.ops.connections import ensure_topics, send_json

    settings = make_settings()
    await ensure_topics(settings, [settings.topics.alerts, settings.topics.labels])
    alert = {"alert_id": "a-17", "incident_id": "i-1", "incident_event": "opened", "source": "line-1/m", "model": MODEL,
             "version": "0001", "ts": 1.0, "score": 9.0, "threshold": 3.0,
             "origin": {"topic": settings.topics.vectors, "partition": 0, "offset": 17}}  # fmt: skip
    await send_json(settings, settings.topics.alerts, "line-1/m", alert)
    config = tmp_path / "config.json"
    config.write_text(settings.model_dump_json(exclude={"kafka_bootstrap", "redis_url"}))

    def lw(*args: str):
        return CliRunner().invoke(app, ["--config", str(config), "models", "label", *args])

    ok = await asyncio.to_thread(lw, "--alert", "a-17", "--false-alarm", "--note", "glare")
    assert ok.exit_code == 0, ok.output
    (label,) = await read_labels(settings, model=MODEL)
    assert (label.alert_id, label.label, label.note, label.origin[2]) == ("a-17", "false_alarm", "glare", 17)
    missing = await asyncio.to_thread(lw, "--alert", "nope")
    assert missing.exit_code == 1 and "no alert nope" in missing.output
