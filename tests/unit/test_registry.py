"""The model registry: versions, manifests, production pointer, rollback stack, integrity and safety checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import ModelIntegrityError, RVAEScorer
from stream_app.registry.versions import Registry, update_message


@pytest.fixture(scope="module")
def scorer() -> RVAEScorer:
    X = np.random.default_rng(0).normal(size=(128, 4)).astype("float32")
    s = RVAEScorer(n_features=4, n_layers=1, hidden=8, latent=2, device="cpu")
    s.fit(X, epochs=1, batch_size=64)
    return s


def test_publish_numbers_versions_and_stores_extra_metadata(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    v1 = reg.publish("press", scorer, extra={"parent": None, "validation": {"decision": "passed", "reason": "ok"}})
    v2 = reg.publish("press", scorer, extra={"parent": v1.version})
    assert (v1.version, v2.version) == ("0001", "0002")
    assert reg.versions("press") == ["0001", "0002"] and reg.models() == ["press"]
    manifest = reg.manifest("press", "0002")
    assert manifest["parent"] == "0001" and manifest["model"] == "press" and manifest["kind"] == "rvae"
    assert set(manifest["files"]) == {"weights.safetensors"} and manifest["calibration_scores"]


def test_failed_save_leaves_the_registry_unchanged(tmp_path: Path, scorer):
    class Broken:
        def save(self, path, extra=None):
            (Path(path) / "weights.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    reg = Registry(tmp_path)
    reg.publish("press", scorer)
    with pytest.raises(OSError, match="disk full"):
        reg.publish("press", Broken())
    assert reg.versions("press") == ["0001"]
    assert [p.name for p in (tmp_path / "press").iterdir() if p.name.startswith(".publish")] == []


def test_promote_then_rollback_walks_back_the_promotion_stack(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.promote("press", reg.publish("press", scorer).version)
    assert reg.production("press").version == "0003"
    assert reg.rollback("press").version == "0002"
    assert reg.rollback("press").version == "0001"
    with pytest.raises(LookupError, match="no earlier promoted version"):
        reg.rollback("press")
    log = reg.promotions("press")
    assert [(e["version"], e["action"]) for e in log][-2:] == [("0002", "rollback"), ("0001", "rollback")]
    assert log[-1]["previous"] == "0002"


def test_rejected_candidate_needs_force_to_promote(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.publish("press", scorer, extra={"validation": {"decision": "rejected", "reason": "too many alarms"}})
    with pytest.raises(ValueError, match="too many alarms"):
        reg.promote("press", mv.version)
    assert reg.promote("press", mv.version, force=True).version == mv.version


def test_tampered_weights_are_refused_on_promote_and_load(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.publish("press", scorer)
    weights = mv.path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError):
        reg.promote("press", mv.version)
    with pytest.raises(ModelIntegrityError):
        reg.load("press", mv.version)


def test_unlisted_or_pickle_files_are_refused(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.publish("press", scorer)
    (mv.path / "extra.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(ModelIntegrityError, match=r"unexpected file extra\.pkl"):
        reg.load("press", mv.version)
    (mv.path / "extra.pkl").unlink()
    manifest = json.loads((mv.path / "manifest.json").read_text())
    (mv.path / "weights.pt").write_bytes(b"x")
    manifest["files"]["weights.pt"] = "0" * 64
    (mv.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="only"):
        reg.load("press", mv.version)


def test_update_message_pins_the_manifest_digest(tmp_path: Path, scorer):
    reg = Registry(tmp_path)
    mv = reg.promote("press", reg.publish("press", scorer).version)
    message = update_message(reg, mv, promoted_at=1.5)
    assert set(message) == {"model", "version", "sha256", "path", "promoted_at"}
    assert message["sha256"] == reg.digest("press", mv.version) and len(message["sha256"]) == 64
    loaded_mv, loaded = reg.load("press", expected_sha256=message["sha256"])
    assert loaded_mv.version == mv.version
    X = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(loaded.score(X), scorer.score(X))
    with pytest.raises(ModelIntegrityError, match="announced"):
        reg.load("press", expected_sha256="0" * 64)


async def test_model_manager_refuses_a_bad_version_and_keeps_serving(tmp_path: Path, scorer):
    from stream_app.scoring.model_manager import ModelManager

    reg = Registry(tmp_path)
    v1 = reg.promote("press", reg.publish("press", scorer).version)
    manager = ModelManager(reg, device="cpu")
    assert (await manager.get("press")).version == v1.version
    v2 = reg.promote("press", reg.publish("press", scorer).version)  # only the production version is swapped to
    assert await manager.swap("press", v2.version, sha256="f" * 64) is None
    assert manager.current("press").version == v1.version and manager.refused[-1][1] == v2.version
    swapped = await manager.swap("press", v2.version, sha256=reg.digest("press", v2.version))
    assert swapped is not None and manager.current("press").version == v2.version
