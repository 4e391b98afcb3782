"""linewatch's security settings against REAL secured servers (deploy/secured.py): Kafka with only a SASL_SSL
listener and SCRAM-SHA-512 users, Redis with TLS only and an ACL user, a CA generated at start. The feeder, the
worker and the alert subscriber run over them; wrong credentials are a fast, clear error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from models import RVAEScorer
from stream_app.alerts.subscribe import subscribe
from stream_app.feed.frames import Frame, feed_frames
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records, redis_client, send_json
from stream_app.ops.processes import running
from stream_app.registry.versions import Registry
from stream_app.settings import Route, Settings, TopicSettings
from stream_app.wire.codecs import encode_image, encode_vector
from tests.integration.shared import own_stack

pytestmark = pytest.mark.integration
F = 4


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from deploy.secured import SecuredStack

    with own_stack(tmp_path_factory.mktemp("secured"), kind=SecuredStack) as stack:
        yield stack


@pytest.fixture
def secure_settings(secured, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        tag = f"s{time.monotonic_ns() % 10**10}"
        base = Settings(
            **secured.settings_overrides(),
            app_id=f"lw-{tag}",
            topics=TopicSettings().prefixed(tag, partitions=2),
            registry_dir=tmp_path / "registry",
            state_dir=tmp_path / "state",
            metrics_port=0,
        )
        base.redis.key_prefix = f"lw-{tag}"
        return base.model_copy(update=overrides)

    return build


def wrong(settings: Settings, **kafka_changes: object) -> Settings:
    bad = settings.model_copy(deep=True)
    for key, value in kafka_changes.items():
        setattr(bad.kafka, key, value)
    return bad


# ------------------------------------------------------------------ the servers really are secured


def test_the_stack_secures_both_servers_and_hides_the_password_in_status(secured):
    assert secured.bootstrap.startswith("127.0.0.1:") and secured.redis_url.startswith("rediss://")
    statuses = {s.name: s for s in secured.status()}
    assert statuses["kafka"].healthy and statuses["redis"].healthy
    assert secured.redis_password not in statuses["redis"].address
    assert oct((secured.state_dir / "tls" / "credentials.json").stat().st_mode & 0o777) == "0o600"


async def test_right_credentials_produce_consume_and_use_redis(secure_settings):
    settings = secure_settings()
    await send_json(settings, settings.topics.control, "press", {"hello": "secured"})
    (rec,) = await read_records(settings, settings.topics.control, lambda r: len(r) >= 1, timeout_s=30)
    assert rec.value == b'{"hello":"secured"}'
    client = redis_client(settings.redis)
    try:
        assert await client.ping()
        await client.set(f"{settings.redis.key_prefix}:x", b"1")
        assert await client.get(f"{settings.redis.key_prefix}:x") == b"1"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"sasl_password": "wrong-password"}, "SaslAuthenticationFailed"),
        ({"sasl_username": "nobody"}, "SaslAuthenticationFailed"),
        ({"ssl_cafile": None}, "CERTIFICATE_VERIFY_FAILED"),  # the system CAs do not vouch for this broker
        ({"security_protocol": "PLAINTEXT", "sasl_mechanism": None}, "closed"),
        ({"security_protocol": "SSL", "sasl_mechanism": None}, ""),  # TLS but no SASL: refused (aiokafka logs nothing)
    ],
)
async def test_kafka_refuses_bad_credentials_quickly_and_says_why(secure_settings, caplog, change, cause):
    caplog.set_level(logging.ERROR, logger="aiokafka")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # the stack's health probe silenced it
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(ensure_topics(wrong(secure_settings(), **change)), timeout=30)
    assert time.monotonic() - started < 15, "a wrong credential must fail fast, not hang"
    assert cause in caplog.text


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("rediss://linewatch:wrong@127.0.0.1:{port}/0", "invalid username-password"),
        ("rediss://127.0.0.1:{port}/0", "authenticated"),  # the default user is off
        ("redis://linewatch:{password}@127.0.0.1:{port}/0", ""),  # no TLS: the server drops the connection
    ],
)
async def test_redis_refuses_wrong_password_the_default_user_and_plaintext(secured, secure_settings, url, error):
    settings = secure_settings()
    settings.redis.url = url.format(port=secured.redis_port, password=secured.redis_password)
    client = redis_client(settings.redis)
    try:
        with pytest.raises(aioredis.RedisError) as info:
            await asyncio.wait_for(client.ping(), timeout=15)
        assert error in str(info.value)
    finally:
        await client.aclose()


# ------------------------------------------------------------------ the product over the secured servers


def fit_model(settings: Settings) -> None:
    X = np.random.default_rng(0).normal(size=(1000, F)).astype(np.float32) + 5.0
    scorer = RVAEScorer(n_features=F, n_layers=1, hidden=16, latent=2, device="cpu")
    scorer.fit(X, epochs=20, batch_size=128)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)


async def test_feeder_worker_and_alert_subscriber_run_over_sasl_ssl_and_redis_tls(secure_settings):
    settings = secure_settings(
        routes=[Route(pattern="line-*", model="sensors")], image_routes=[Route(pattern="*", model="sensors")]
    )
    settings.batching.max_wait_ms = 20
    fit_model(settings)
    await ensure_topics(settings)
    alerts = subscribe(settings, "line-1/*", from_beginning=True)
    first_alert = asyncio.ensure_future(alerts.__anext__())
    rng = np.random.default_rng(1)
    with running(settings, "worker", "-l", "info") as proc:
        async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
            for i in range(200):
                row = rng.normal(size=F) + 5.0
                if i % 50 == 49:
                    row[1] += 25.0  # far outside normal: alerts
                await producer.send(
                    settings.topics.vectors, encode_vector("line-1/press", row, seq=i), key=b"line-1/press"
                )
            await producer.flush()
        report = await feed_frames(settings, [Frame("f.png", encode_image(np.zeros((16, 16), np.uint8)))], "line-1/cam")
        assert report.sent == 1
        verdicts = await read_records(settings, settings.topics.scores, lambda r: len(r) >= 200, timeout_s=120)
        dead = await read_records(settings, settings.topics.deadletter, lambda r: len(r) >= 1, timeout_s=60)
        alert = await asyncio.wait_for(first_alert, timeout=60)
        assert proc.poll() is None
    with contextlib.suppress(Exception):
        await alerts.aclose()
    assert len(verdicts) == 200 and alert["source"] == "line-1/press" and alert["score"] > alert["threshold"]
    assert dict(dead[0].headers)["reason"] == b"rejected_by_model"  # the camera frame, routed to a vector model
    client = redis_client(settings.redis)
    try:
        assert await client.keys(f"{settings.redis.key_prefix}*"), "thresholds live in the TLS Redis"
    finally:
        await client.aclose()


async def test_a_worker_with_a_wrong_kafka_password_exits_with_the_reason(secure_settings, tmp_path):
    settings = wrong(secure_settings(), sasl_password="wrong-password")
    log = tmp_path / "worker.log"
    with running(settings, "worker", "-l", "info", log_file=log) as proc:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert proc.poll() is not None, "the worker must stop on a wrong password, not retry forever"
    assert proc.returncode != 0
    assert "Authentication failed" in log.read_text(errors="replace")


async def test_the_retraining_agent_reads_its_window_and_takes_triggers_over_sasl_ssl(secure_settings):
    from stream_app.retraining.agent import RetrainAgent, send_trigger

    settings = secure_settings(routes=[Route(pattern="line-*", model="sensors")])
    settings.retrain.min_samples = 10**6  # read the window over SASL_SSL, then skip: nothing to fit on
    fit_model(settings)
    await ensure_topics(settings)
    result = await RetrainAgent(settings, progress=False).run_cycle("sensors", trigger="test")
    assert result.decision == "skipped" and "min_samples" in result.reason
    message = await asyncio.wait_for(send_trigger(settings, "sensors"), 30)
    assert message["model"] == "sensors"
