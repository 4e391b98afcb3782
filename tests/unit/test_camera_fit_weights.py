"""`models fit` for cameras: pretrained weights or a clear refusal, a `--weights FILE` pinned by hash, an
explicit `--random-backbone` marked wherever the model shows up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from models import ModelIntegrityError
from stream_app.cli import app
from stream_app.registry.backbones import BACKBONES_DIR, model_flags
from stream_app.registry.versions import Registry
from stream_app.settings import Settings

ARCH = "vit_tiny_patch16_224"


def lw(config: Path, *args: str):
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path, Registry]:
    """A registry, a config pointing at it and a folder of 12 small frames."""
    from PIL import Image

    settings = Settings(registry_dir=tmp_path / "registry")
    config = tmp_path / "config.json"
    config.write_text(settings.model_dump_json(exclude={"kafka_bootstrap", "redis_url"}))
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, size=(32, 32), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return config, folder, Registry(settings.registry_dir)


def fit_args(folder: Path, *extra: str) -> list[str]:
    return ["models", "fit", "camera", "--data", str(folder), "--epochs", "1", "--img-size", "32", "--n-blocks",
            "2", "--device", "cpu", "--backbone", ARCH, *extra]  # fmt: skip


def vit_weights(path: Path, seed: int = 7) -> Path:
    """A small timm ViT's weights as a safetensors file (what a site copies in for an air-gapped install)."""
    import timm

    torch.manual_seed(seed)
    save_file(timm.create_model(ARCH, pretrained=False).state_dict(), str(path))
    return path


def test_the_default_refuses_clearly_when_no_pretrained_weights_can_be_had(site, tmp_path, monkeypatch):
    config, folder, registry = site
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    result = lw(config, *fit_args(folder))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no pretrained weights for vit_tiny_patch16_224" in text
    assert "--weights FILE" in text and "models backbone import" in text and "--random-backbone" in text
    assert registry.models() == [], "nothing is published without weights"


def test_weights_file_is_checked_kept_by_hash_and_pinned_so_a_changed_file_is_refused(site, tmp_path):
    config, folder, registry = site
    weights = vit_weights(tmp_path / "vit.safetensors")
    result = lw(config, *fit_args(folder, "--weights", str(weights)))
    assert result.exit_code == 0, result.output
    manifest = registry.manifest("camera", "0001")
    stored = Path(manifest["config"]["pretrained"])
    assert stored.parent.parent.name == BACKBONES_DIR and stored.is_file()
    assert stored.stem == manifest["config"]["weights_sha256"] and model_flags(manifest) == []
    registry.load("camera", "0001", "cpu")  # loads while the bytes match

    tensors = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(stored)))
    tensors["cls_token"] = tensors["cls_token"] + 1.0  # someone swaps the backbone under the model
    save_file(tensors, str(stored))
    with pytest.raises(ModelIntegrityError):
        registry.load("camera", "0001", "cpu")


def test_a_file_of_another_architecture_is_refused_before_anything_is_fitted(site, tmp_path):
    config, _, registry = site
    import timm

    save_file(timm.create_model("vit_small_patch16_224", pretrained=False).state_dict(), str(tmp_path / "s.st"))
    (tmp_path / "s.st").rename(tmp_path / "small.safetensors")
    result = lw(config, "models", "backbone", "import", str(tmp_path / "small.safetensors"), "--arch", ARCH)
    assert result.exit_code == 1 and "does not fit timm" in " ".join(result.output.split())
    assert registry.models() == []


def test_backbone_import_keeps_one_copy_per_content(site, tmp_path):
    config, _, registry = site
    weights = vit_weights(tmp_path / "vit.safetensors")
    for _ in range(2):
        result = lw(config, "models", "backbone", "import", str(weights), "--arch", ARCH)
        assert result.exit_code == 0, result.output
    assert len(list((registry.root / BACKBONES_DIR / ARCH).glob("*.safetensors"))) == 1


def test_random_backbone_is_explicit_and_marked(site, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    config, folder, registry = site
    assert lw(config, *fit_args(folder, "--random-backbone")).exit_code == 0
    assert model_flags(registry.manifest("camera", "0001")) == ["random-backbone"]
    assert "random-backbone" in lw(config, "models", "list").output


def test_the_offline_image_kind_fits_without_any_weights(site, tmp_path, monkeypatch):
    config, folder, registry = site
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    args = ["models", "fit", "camera", "--data", str(folder), "--kind", "patch-memory", "--device", "cpu"]
    assert lw(config, *args).exit_code == 0
    assert registry.manifest("camera", "0001")["kind"] == "patch-memory"
    assert registry.load("camera", "0001", "cpu")[1].score(np.zeros((2, 32, 32), np.uint8)).shape == (2,)
