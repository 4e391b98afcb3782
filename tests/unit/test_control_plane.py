"""The control plane trusts nothing it reads: model-updates and control messages are checked, swaps follow the
registry's production pointer only, and every refusal has a reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest

from models import RVAEScorer
from stream_app.registry.announcements import CONTROL_REJECT_REASONS, ControlRejected, parse_update
from stream_app.registry.versions import InvalidName, Registry, check_name, update_message
from stream_app.retraining.agent import control_message, parse_control
from stream_app.scoring.model_manager import ModelManager


@pytest.fixture(scope="module")
def scorer() -> RVAEScorer:
    X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    s = RVAEScorer(n_features=4, n_layers=1, hidden=8, latent=2, device="cpu")
    s.fit(X, epochs=1, batch_size=64)
    return s


def rejected(fn, *args, **kwargs) -> str:
    with pytest.raises(ControlRejected) as info:
        fn(*args, **kwargs)
    assert info.value.reason in CONTROL_REJECT_REASONS
    return info.value.reason


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["sensors", "camera-1", "v1.2_rc", "0001"])
def test_safe_names_pass(name):
    assert check_name("model name", name) == name


@pytest.mark.parametrize("name", ["", "..", ".", ".hidden", "../camera/0001", "a/b", "a..b", "x" * 129, "é", "a b", 7])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InvalidName):
        check_name("version", name)


def test_the_registry_refuses_paths_that_leave_a_models_directory(tmp_path: Path):
    reg = Registry(tmp_path)
    with pytest.raises(InvalidName):
        reg.path("sensors", "../camera/0001")
    with pytest.raises(InvalidName):
        reg.versions("../etc")


# ------------------------------------------------------------------ model-updates messages

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", "bad_schema"),
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b'"sensors"', "bad_schema"),
        (b'{"model": "sensors", "version": "0002"}', "bad_schema"),
        (b'{"model": "sensors", "version": 2, "sha256": "' + DIGEST.encode() + b'"}', "bad_schema"),
        (b'{"model": "sensors", "version": "0002", "sha256": "xyz"}', "bad_schema"),
        (b'{"model": "sensors", "version": "../camera/0001", "sha256": "' + DIGEST.encode() + b'"}', "invalid_name"),
        (b'{"model": "../../etc", "version": "0001", "sha256": "' + DIGEST.encode() + b'"}', "invalid_name"),
    ],
)
def test_bad_model_updates_are_rejected_with_a_reason(value, reason):
    assert rejected(parse_update, value) == reason


def test_a_registry_update_message_parses(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.promote("press", reg.publish("press", scorer).version)
    message = update_message(reg, mv, promoted_at=1.0)
    assert parse_update(orjson.dumps(message)) == message


# ------------------------------------------------------------------ control (retrain) messages


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", "bad_schema"),
        (b"not json", "malformed_json"),
        (b'{"action": "stop", "model": "m", "requested_at": 1000}', "unsupported_action"),
        (b'{"action": "retrain", "model": "m"}', "bad_schema"),
        (b'{"action": "retrain", "model": "m", "requested_at": "soon"}', "bad_schema"),
        (b'{"action": "retrain", "model": "../m", "requested_at": 1000}', "invalid_name"),
        (b'{"action": "retrain", "model": "m", "requested_at": 100000000000000000000}', "stale"),
        (b'{"action": "retrain", "model": "m", "requested_at": 10}', "stale"),
    ],
)
def test_bad_control_messages_are_rejected_with_a_reason(value, reason):
    assert rejected(parse_control, value, now=1000.0, max_age_s=60) == reason


def test_a_fresh_retrain_request_names_its_model():
    assert parse_control(orjson.dumps(control_message("press", 990.0)), now=1000.0, max_age_s=60) == "press"


# ------------------------------------------------------------------ swaps follow the production pointer


async def test_a_traversal_version_with_another_models_digest_is_refused_and_nothing_loads(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    reg.promote("sensors", reg.publish("sensors", scorer).version)
    camera = reg.promote("camera", reg.publish("camera", scorer).version)
    manager = ModelManager(reg, device="cpu")
    await manager.get("sensors")
    update = {"model": "sensors", "version": "../camera/0001", "sha256": reg.digest("camera", camera.version)}
    result = await manager.apply_update(update)
    assert result.loaded is None and result.rejected == "invalid_name"
    assert manager.current("sensors").version == "0001" and manager.rejections == {"invalid_name": 1}


async def test_a_published_but_unpromoted_candidate_is_not_served(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    reg.promote("press", reg.publish("press", scorer).version)
    candidate = reg.publish("press", scorer, extra={"validation": {"decision": "rejected", "reason": "worse"}})
    manager = ModelManager(reg, device="cpu")
    await manager.get("press")
    result = await manager.apply_update(
        {"model": "press", "version": candidate.version, "sha256": reg.digest("press", candidate.version)}
    )
    assert result.rejected == "not_production" and manager.current("press").version == "0001"


async def test_promoted_versions_and_rollback_targets_are_served(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    await manager.get("press")
    v2 = reg.promote("press", reg.publish("press", scorer).version)
    assert (await manager.apply_update(update_message(reg, v2))).loaded.version == "0002"
    back = reg.rollback("press")
    assert (await manager.apply_update(update_message(reg, back))).loaded.version == "0001"


async def test_a_digest_that_is_not_the_manifests_is_refused(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    await manager.get("press")
    v2 = reg.promote("press", reg.publish("press", scorer).version)
    result = await manager.apply_update({"model": "press", "version": v2.version, "sha256": "0" * 64})
    assert result.rejected == "digest_mismatch" and manager.current("press").version == "0001"


async def test_announcements_for_models_this_worker_does_not_route_are_refused(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.promote("other", reg.publish("other", scorer).version)
    manager = ModelManager(reg, device="cpu")
    result = await manager.apply_update(update_message(reg, mv), served={"sensors"})
    assert result.rejected == "unknown_model" and manager.current("other") is None


async def test_a_tampered_production_pointer_is_refused(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    await manager.get("press")
    (tmp_path / "press" / "PRODUCTION").write_text("../camera/0001\n")
    result = await manager.refresh("press")
    assert result.loaded is None and manager.current("press").version == "0001"


class SlowRegistry(Registry):
    """Loading production takes a while (a big image model): announcements arrive meanwhile."""

    def load(self, model, version=None, device=None, expected_sha256=None):
        mv, scorer = super().load(model, version, device, expected_sha256)
        if version is None:
            import time

            time.sleep(0.5)
        return mv, scorer


async def test_an_announcement_during_a_slow_first_load_is_applied_after_it(tmp_path: Path, scorer):
    reg = SlowRegistry(tmp_path)
    reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    first = asyncio.create_task(manager.get("press"))
    await asyncio.sleep(0.1)  # production (0001) is being loaded now
    v2 = reg.promote("press", reg.publish("press", scorer).version)
    result = await manager.apply_update(update_message(reg, v2))
    assert (await first).version == "0001"
    assert result.loaded is not None and manager.current("press").version == "0002"


async def test_an_announcement_before_any_load_loads_production(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    assert (await manager.apply_update(update_message(reg, mv), served={"press"})).loaded.version == "0001"
    assert (await manager.get("press")).version == "0001"


def test_each_version_that_starts_serving_is_announced_once(tmp_path: Path, scorer: RVAEScorer):
    """The worker freezes the heap on each load (a model loaded mid-stream must not be rescanned by the collector)."""
    reg = Registry(tmp_path)
    v1 = reg.publish("sensors", scorer).version
    reg.promote("sensors", v1)
    started: list[str] = []
    manager = ModelManager(reg, device="cpu", on_load=lambda loaded, _: started.append(loaded.version))

    async def scenario() -> None:
        await manager.get("sensors")
        await manager.get("sensors")  # serving already: no load
        v2 = reg.publish("sensors", scorer).version
        reg.promote("sensors", v2)
        await manager.swap("sensors", v2)
        await manager.swap("sensors", v2)  # the version serving: nothing new

    asyncio.run(scenario())
    assert started == [v1, reg.production("sensors").version] and v1 != started[1]
