"""`linewatch models ...` and `linewatch retrain ...` through typer's CliRunner, on a temporary registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from stream_app.cli import app
from stream_app.ops.connections import read_records
from stream_app.registry.versions import Registry
from stream_app.settings import Settings

runner = CliRunner()


def config_file(settings: Settings, tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(settings.model_dump_json(exclude={"kafka_bootstrap", "redis_url"}))
    return path


def lw(config: Path, *args: str):
    result = runner.invoke(app, ["--config", str(config), *args])
    assert "Traceback" not in result.output, result.output
    return result


def fit_args(data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--epochs", "2", "--n-layers", "1", "--hidden", "32", "--latent", "2", *extra]


@pytest.fixture
def offline(tmp_path: Path) -> tuple[Path, Path]:
    """A config with a temporary registry (no servers) and a .npy file of normal samples."""
    settings = Settings(registry_dir=tmp_path / "registry")
    data = tmp_path / "normal.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
    return config_file(settings, tmp_path), data


def test_fit_publishes_a_version_and_list_and_show_describe_it(offline):
    config, data = offline
    result = lw(config, "models", "fit", "press", *fit_args(data))
    assert result.exit_code == 0, result.output
    assert "published press version 0001" in result.output
    listing = lw(config, "models", "list")
    assert listing.exit_code == 0 and "press" in listing.output and "rvae" in listing.output
    versions = lw(config, "models", "show", "press")
    assert versions.exit_code == 0 and "0001" in versions.output and "cli" in versions.output
    detail = lw(config, "models", "show", "press", "1")
    registry = Registry(json.loads(config.read_text())["registry_dir"])
    assert detail.exit_code == 0 and registry.digest("press", "0001")[:16] in detail.output
    assert "initial threshold" in detail.output and "training data" in detail.output


def test_fit_with_a_window_publishes_a_temporal_model_and_retraining_keeps_its_window(offline):
    from stream_app.retraining.agent import new_candidate

    config, data = offline
    result = lw(config, "models", "fit", "press", *fit_args(data, "--window", "3"))
    assert result.exit_code == 0 and "window 3" in result.output, result.output
    _, scorer = Registry(json.loads(config.read_text())["registry_dir"]).load("press", "0001", "cpu")
    assert scorer.window == 3 and scorer.input_names[0] == "f0@t-2"
    assert new_candidate(scorer, "cpu").window == 3


def test_user_errors_exit_1_with_one_line_and_no_traceback(offline, tmp_path: Path):
    config, data = offline
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(5))
    cases = [
        (["models", "show", "nope"], "no model 'nope'"),
        (["models", "fit", "press", "--data", str(tmp_path / "missing.npy")], "does not exist"),
        (["models", "fit", "press", "--data", str(bad)], "expected a numeric [N, F] array"),
        (["models", "fit", "press", "--data", str(data), "--kind", "transformaly"], "does not fit vectors"),
        (["models", "fit", "camera", "--data", str(tmp_path), "--window", "3"], "is for vector models"),
        (["models", "promote", "nope", "1"], "no model 'nope'"),
        (["models", "rollback", "nope"], "no model 'nope'"),
        (["retrain", "--once", "nope"], "no production version"),
    ]
    for args, message in cases:
        result = lw(config, *args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (args, result.output)


def test_rollback_without_an_earlier_version_is_a_user_error(offline):
    config, data = offline
    assert lw(config, "models", "fit", "press", *fit_args(data), "--promote", "--no-announce").exit_code == 0
    result = lw(config, "models", "rollback", "press", "--no-announce")
    assert result.exit_code == 1 and "no earlier promoted version" in result.output


def test_fit_on_a_folder_of_images_publishes_a_transformaly_version(tmp_path: Path):
    from PIL import Image

    settings = Settings(registry_dir=tmp_path / "registry")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, size=(32, 32), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    args = ["--data", str(folder), "--epochs", "1", "--img-size", "32", "--n-blocks", "2", "--device", "cpu"]
    args += ["--backbone", "vit_tiny_patch16_224", "--random-backbone"]
    result = lw(config_file(settings, tmp_path), "models", "fit", "camera", *args)
    assert result.exit_code == 0, result.output
    manifest = Registry(settings.registry_dir).manifest("camera", "0001")
    assert manifest["kind"] == "transformaly" and manifest["training_data"]["shape"] == [12, 32, 32]


async def _updates(settings: Settings) -> list[tuple[str, str]]:
    """Every model-updates message so far (reads the topic for 3 s)."""
    records = await read_records(settings, settings.topics.model_updates, lambda r: False, timeout_s=3.0)
    values = [orjson.loads(m.value) for m in records]
    return [(v["model"], v["version"]) for v in values]


@pytest.mark.integration
def test_promote_and_rollback_move_production_and_announce_each_change(make_settings, tmp_path: Path):
    import asyncio

    settings = make_settings()
    config = config_file(settings, tmp_path)
    data = tmp_path / "normal.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
    assert lw(config, "models", "fit", "press", *fit_args(data), "--promote").exit_code == 0
    assert lw(config, "models", "fit", "press", *fit_args(data, "--seed", "1")).exit_code == 0
    promoted = lw(config, "models", "promote", "press", "2")
    assert promoted.exit_code == 0 and "0001 -> 0002" in promoted.output and "announced" in promoted.output
    rolled = lw(config, "models", "rollback", "press")
    assert rolled.exit_code == 0 and "0002 -> 0001" in rolled.output
    assert Registry(settings.registry_dir).production("press").version == "0001"
    assert asyncio.run(_updates(settings)) == [("press", "0001"), ("press", "0002"), ("press", "0001")]
    once = lw(config, "retrain", "--once", "press")  # no traffic yet: the cycle is skipped, the registry unchanged
    assert once.exit_code == 0 and "skipped" in once.output and "min_samples" in " ".join(once.output.split())
    assert Registry(settings.registry_dir).versions("press") == ["0001", "0002"]
    triggered = lw(config, "retrain", "trigger", "press")
    assert triggered.exit_code == 0 and "requested" in triggered.output


def test_announce_failure_is_reported_as_an_error_that_says_the_pointer_moved(offline, monkeypatch):
    config, data = offline
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)  # it would override the config file
    raw = json.loads(config.read_text())
    raw["kafka"]["bootstrap"] = "127.0.0.1:1"  # nothing listens here
    config.write_text(json.dumps(raw))
    result = lw(config, "models", "fit", "press", *fit_args(data), "--promote")
    assert result.exit_code == 1 and "now points at version 0001, but announcing it" in " ".join(result.output.split())
