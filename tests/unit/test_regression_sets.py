"""Canary faults, the per-model confirmed set, and the production pointer's compare-and-set. No servers."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch

from models import RVAEScorer
from stream_app.alerts.labels import Label
from stream_app.registry.versions import PromotionConflict, Registry
from stream_app.retraining.agent import RetrainAgent
from stream_app.retraining.canaries import image_canaries, robust_sigma, vector_canaries
from stream_app.retraining.feedback import Feedback, dismissed_ids
from stream_app.retraining.regression import RegressionSet
from stream_app.retraining.window import TrainingWindow
from stream_app.settings import Settings


def test_vector_canaries_offset_one_sensor_by_k_robust_sigmas_stick_one_and_swap_a_pair() -> None:
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32) * [1, 2, 3, 4] + [0, 10, 0, 0]
    c = vector_canaries(x, k=6.0, n=100, seed=1)
    sig = robust_sigma(x)
    assert {k: v.shape for k, v in c.items()} == {"offset": (100, 4), "stuck": (100, 4), "swap": (100, 4)}
    rows = vector_canaries(x, k=0.0, n=100, seed=1)["offset"]  # same rows, no offset
    diff = np.abs(c["offset"] - rows) / sig
    assert np.allclose(np.sort(diff, axis=1)[:, -1], 6.0, rtol=1e-3) and (np.sort(diff, axis=1)[:, :-1] < 1e-4).all()
    swapped = np.flatnonzero((np.abs(c["swap"] - rows) > 1e-6).any(axis=0))
    assert 1 in swapped and len(swapped) == 2  # feature 1 has the most distant median
    assert np.array_equal(vector_canaries(x, n=100, seed=1)["stuck"], c["stuck"])  # deterministic


def test_image_canaries_change_a_patch_a_region_and_a_line() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 48, 64), dtype=np.uint8)
    c = image_canaries(imgs, n=8, seed=0)
    assert sorted(c) == ["blur", "patch", "scratch"]
    for kind, out in c.items():
        assert out.shape == (8, 48, 64) and out.dtype == np.uint8, kind
        assert all((o != imgs).any() for o in out), kind  # every canary differs from every source image
    rgb = np.repeat(imgs[..., None], 3, axis=-1)
    assert image_canaries(rgb, n=2)["blur"].shape == (2, 48, 64, 3)
    with pytest.raises(ValueError, match="uint8 images"):
        image_canaries(imgs.astype(np.float32))


def test_the_confirmed_set_keeps_each_incident_once_newest_first_capped_and_survives_a_restart(tmp_path) -> None:
    rs = RegressionSet(tmp_path, "press", cap=5)
    assert rs.load() == (None, [])
    assert rs.add(np.ones((3, 2), np.float32), ["a", "a", "b"]) == 3
    assert rs.add(np.full((3, 2), 2, np.float32), ["b", "c", "c"]) == 2  # b is stored already
    assert rs.add(np.full((2, 2), 3, np.float32), ["d", "d"]) == 2
    events, ids = RegressionSet(tmp_path, "press", cap=5).load()
    assert ids == ["a", "b", "c", "c", "d", "d"][-5:] and events.shape == (5, 2)
    assert RegressionSet(tmp_path, "press").load(shape=(3,)) == (None, [])  # the model's width changed
    assert not list((tmp_path / "regression" / "press").glob(".*"))  # no temp files left


def test_a_save_interrupted_by_a_crash_leaves_a_readable_set(tmp_path, monkeypatch) -> None:
    """A set saved as two files (events, then their ids) was left mismatched by a crash between the two writes,
    and every later cycle failed on it; one file is replaced at once or not at all."""
    rs = RegressionSet(tmp_path, "press")
    rs.add(np.ones((2, 3), np.float32), ["a", "a"])
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with contextlib.suppress(OSError):
        rs.add(np.zeros((1, 3), np.float32), ["b"])
    monkeypatch.setattr(os, "replace", real_replace)
    events, ids = RegressionSet(tmp_path, "press").load()
    assert events is not None and len(events) == len(ids) and ids in (["a", "a"], ["a", "a", "b"])


def test_a_set_stored_with_a_separate_index_still_loads_and_is_rewritten_as_one_file(tmp_path) -> None:
    import json

    from safetensors.numpy import save_file

    folder = tmp_path / "regression" / "press"
    folder.mkdir(parents=True)
    save_file({"events": np.ones((2, 3), np.float32)}, str(folder / "events.safetensors"))
    (folder / "index.json").write_text(json.dumps({"incident_ids": ["a", "a"]}))
    rs = RegressionSet(tmp_path, "press")
    assert rs.load()[1] == ["a", "a"]
    assert rs.add(np.zeros((1, 3), np.float32), ["b"]) == 1
    assert not (folder / "index.json").exists() and RegressionSet(tmp_path, "press").load()[1] == ["a", "a", "b"]


def test_a_set_of_another_event_shape_is_set_aside_not_erased(tmp_path) -> None:
    rs = RegressionSet(tmp_path, "press")
    rs.add(np.ones((2, 4), np.float32), ["wide", "wide"])
    assert rs.add(np.zeros((1, 3), np.float32), ["narrow"]) == 1  # the model's width changed: a new set
    folder = tmp_path / "regression" / "press"
    aside = list(folder.glob("events.set-aside-*.safetensors"))
    assert len(aside) == 1 and rs.load()[1] == ["narrow"]
    from safetensors.numpy import load_file

    assert load_file(aside[0])["events"].shape == (2, 4)


def test_an_unreadable_set_says_which_file_and_what_to_do(tmp_path) -> None:
    folder = tmp_path / "regression" / "press"
    folder.mkdir(parents=True)
    (folder / "events.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"events\.safetensors: unreadable regression set .*move it aside"):
        RegressionSet(tmp_path, "press").load()


def registry_of_three(folder) -> tuple[Registry, list[str]]:
    """A registry holding three published versions of model "m", none promoted."""
    registry = Registry(folder)
    scorer = RVAEScorer(3, n_layers=1, hidden=8, latent=2, device="cpu")
    scorer.fit(np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32), epochs=1)
    return registry, [registry.publish("m", scorer).version for _ in range(3)]


def test_a_rollback_is_a_compare_and_set_too(tmp_path) -> None:
    """A promotion landing while a rollback verifies its target's files wins; the rollback is refused."""
    registry, (v1, v2, v3) = registry_of_three(tmp_path)
    registry.promote("m", v1)
    registry.promote("m", v2)
    check = registry.check_contents

    def promotion_meanwhile(model: str, version: str) -> dict:
        registry.check_contents = check  # type: ignore[method-assign]
        registry.promote("m", v3, expected_current=v2)
        return check(model, version)

    registry.check_contents = promotion_meanwhile  # type: ignore[method-assign]
    with pytest.raises(PromotionConflict, match=f"production is {v3}, not {v2} as expected; no rollback"):
        registry.rollback("m")
    assert registry.production("m").version == v3


def test_an_update_reads_and_writes_the_set_once(tmp_path, monkeypatch) -> None:
    rs = RegressionSet(tmp_path, "press")
    rs.add(np.ones((2, 3), np.float32), ["old", "old"])
    writes: list[int] = []
    save = RegressionSet._save
    monkeypatch.setattr(RegressionSet, "_save", lambda self, e, i: (writes.append(len(i)), save(self, e, i)))
    update = rs.update(np.full((3, 3), 2.0, np.float32), ["x", "y", "y"], remove={"old"}, shape=(3,))
    assert (update.added, update.removed, update.ids, writes) == (3, 2, ["x", "y", "y"], [3])
    assert update.events is not None and update.events.shape == (3, 3)
    assert rs.update(np.empty((0, 3), np.float32), [], remove=set(), shape=(3,)).ids == ["x", "y", "y"]
    assert writes == [3]  # nothing changed: nothing written


def test_promotion_is_a_compare_and_set_on_the_production_pointer(tmp_path) -> None:
    registry, (v1, v2, v3) = registry_of_three(tmp_path)
    registry.promote("m", v1)
    registry.promote("m", v2, expected_current=v1)
    with pytest.raises(PromotionConflict, match=f"production is {v2}, not {v1}"):
        registry.promote("m", v3, expected_current=v1)  # validated against v1, but v2 serves now
    assert registry.production("m").version == v2


def test_incidents_an_operator_called_false_alarms_leave_the_confirmed_set(tmp_path) -> None:
    """A drift's first alarms form incidents that close inside the window; an operator who calls them false alarms
    must be able to retrain past them: they are not added, and the set forgets them if it holds them already."""
    settings = Settings(state_dir=tmp_path, registry_dir=tmp_path / "registry")
    agent = RetrainAgent(settings, progress=False)
    rs = RegressionSet(tmp_path, "press")
    rs.add(np.full((2, 3), 9.0, np.float32), ["drift-1", "drift-1"])
    rs.add(np.full((1, 3), 7.0, np.float32), ["label:a1"])
    window = TrainingWindow(
        topic="t", model="press", kind="vectors", guard=True, train=np.zeros((10, 3), np.float32),
        holdout=np.zeros((4, 3), np.float32), incidents=np.array([[5.0] * 3, [6.0] * 3, [8.0] * 3], np.float32),
        incident_ids=["drift-2", "drift-2", "fault-1"], closed=np.array([True, True, True]),
    )  # fmt: skip
    dismissed = {"drift-1", "drift-2", "label:a1"}
    events, counts = agent._confirmed("press", window, Feedback(dismissed=dismissed))
    assert RegressionSet(tmp_path, "press").load()[1] == ["fault-1"]
    assert events is not None and events.tolist() == [[8.0] * 3] and counts["dismissed"] == 3


def test_the_newest_label_of_an_alert_decides_whether_its_incident_is_dismissed() -> None:
    def label(alert: str, incident: str | None, kind: str, at: float) -> Label:
        return Label(alert, incident, "s", "m", "1", kind, "", "op", at, None, None, None, ("t", 0, 0))  # type: ignore[arg-type]

    labels = [label("a1", "inc-1", "false_alarm", 1.0), label("a2", "inc-2", "false_alarm", 1.0),
              label("a2", "inc-2", "real_defect", 2.0), label("a3", None, "false_alarm", 1.0)]  # fmt: skip
    assert dismissed_ids(labels) == {"inc-1", "label:a1", "label:a3"}


def test_canaries_for_a_windowed_model_keep_the_holdout_in_its_order() -> None:
    """A model with temporal context scores canaries as one sequence: rows drawn at random flag it by their
    order alone (0.99 of unfaulted rows here), so the canary check measured reshuffling, not faults."""
    from stream_app.retraining.decision import calibrated_threshold
    from stream_app.settings import ThresholdSettings

    t = np.arange(3000)
    x = np.stack([np.sin(t / 20), np.cos(t / 20), np.sin(t / 35)], 1)
    x = (x + 0.05 * np.random.default_rng(0).normal(size=x.shape)).astype(np.float32)
    model = RVAEScorer(n_features=3, window=8, n_layers=1, hidden=16, latent=2, device="cpu", seed=0)
    model.fit(x[:2500], epochs=15)
    threshold = calibrated_threshold(ThresholdSettings(), model.calibration_scores)
    holdout = x[2500:]
    unfaulted = vector_canaries(holdout, k=0.0, n=200, in_order=True)["offset"]
    start = int(np.flatnonzero((holdout == unfaulted[0]).all(axis=1))[0])
    assert np.array_equal(unfaulted, holdout[start : start + 200])  # a run of consecutive rows
    assert float(np.mean(model.score(unfaulted) > threshold)) < 0.1
    faulted = vector_canaries(holdout, k=6.0, n=200, in_order=True)
    assert all(float(np.mean(model.score(c) > threshold)) > 0.5 for c in faulted.values())


def test_version_numbers_go_past_9999_and_ignore_names_that_are_not_numbers(tmp_path):
    """Versions sorted as strings put 10000 before 9999, so publishing stopped for good at 10000; a version
    folder named rc-1 made every publish fail on int('rc-1')."""
    import shutil

    registry, (v1, _, _) = registry_of_three(tmp_path)
    base = tmp_path / "m"
    shutil.copytree(base / v1, base / "9999")
    scorer = registry.load("m", v1, device="cpu")[1]
    assert registry.publish("m", scorer).version == "10000"
    shutil.copytree(base / v1, base / "rc-1")
    assert registry.publish("m", scorer).version == "10001"
    assert registry.versions("m")[-4:] == ["9999", "10000", "10001", "rc-1"]


def test_a_published_version_is_readable_by_other_users(tmp_path):
    """mkdtemp made the version folder 0700 and its weights 0600: workers under another uid could not load a
    version published with `models fit` by someone else."""
    import stat

    _, (v1, _, _) = registry_of_three(tmp_path)
    folder = tmp_path / "m" / v1
    assert stat.S_IMODE(folder.stat().st_mode) & 0o055 == 0o055
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044 for f in folder.iterdir())


def test_the_weights_loaded_are_the_bytes_whose_hash_was_checked(tmp_path, monkeypatch):
    """The weights file was hashed, then opened again by path to load: a file swapped in between (by whoever can
    write the registry volume, the attacker the hashes are for) was served unchecked."""
    import hashlib

    from safetensors.torch import load_file, save_file

    import models.persistence as persistence

    registry, (v1, _, _) = registry_of_three(tmp_path)
    weights = tmp_path / "m" / v1 / "weights.safetensors"
    genuine = registry.load("m", v1, device="cpu")[1]
    tampered = {k: v * 0 + 7 for k, v in load_file(str(weights)).items()}
    swapped: list[bool] = []
    real_sha256 = hashlib.sha256

    class SwapAfterHashing:
        def __init__(self, *args) -> None:
            self._h = real_sha256(*args)

        def update(self, data) -> None:
            self._h.update(data)

        def hexdigest(self) -> str:
            digest = self._h.hexdigest()
            if not swapped and weights.exists():
                swapped.append(True)
                save_file(tampered, str(weights))  # right after the check, before the load
            return digest

    monkeypatch.setattr(persistence.hashlib, "sha256", SwapAfterHashing)
    try:
        loaded = registry.load("m", v1, device="cpu")[1]
    except persistence.ModelIntegrityError:
        return  # refused: also safe
    assert swapped
    for mine, theirs in zip(loaded.net.parameters(), genuine.net.parameters(), strict=True):
        assert torch.equal(mine, theirs)
