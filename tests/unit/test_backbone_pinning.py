"""TransformalyScorer pins its backbone: a state-dict sha256 in the manifest, checked at load.

A random-init vit_tiny saved to safetensors stands in for downloaded weights (no network here).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import models
from models.persistence import MANIFEST, ModelIntegrityError
from models.transformaly import RANDOM_BACKBONE, TransformalyScorer, check_backbone_file, state_dict_sha256

ARCH = "vit_tiny_patch16_224"
TINY = {"backbone": ARCH, "img_size": 32, "n_blocks": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(60, 200, size=(12, 32, 32), dtype=np.uint8)


@pytest.fixture()
def weights(tmp_path) -> tuple:
    import timm

    torch.manual_seed(5)
    net = timm.create_model(ARCH, pretrained=False)  # full model at 224 px, head included, like a hub file
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net


def test_state_dict_hash_is_order_and_device_independent_and_sees_one_changed_value() -> None:
    a = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(2, dtype=torch.float16), "c": torch.tensor(3)}
    b = dict(reversed(list(a.items())))
    assert state_dict_sha256(a) == state_dict_sha256(b)
    changed = {**a, "b": a["b"].clone()}
    changed["b"][1, 2] += 1
    assert state_dict_sha256(changed) != state_dict_sha256(a)
    assert state_dict_sha256({"b": a["b"].view(3, 2)}) != state_dict_sha256({"b": a["b"]})  # shape counts


def test_random_init_is_marked_and_pinned(images, tmp_path) -> None:
    s = TransformalyScorer(**TINY, pretrained=False, epochs=0)
    assert s.backbone_source == RANDOM_BACKBONE == "random-backbone"
    s.fit(images, batch_size=8)
    s.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / MANIFEST).read_text())["config"]
    assert cfg["backbone_source"] == "random-backbone"
    assert cfg["backbone_sha256"] == state_dict_sha256(s.teacher.backbone) and len(cfg["backbone_sha256"]) == 64
    assert models.load_scorer(tmp_path / "m").backbone_sha256 == cfg["backbone_sha256"]


def test_a_different_backbone_than_the_pinned_one_is_refused(images, tmp_path) -> None:
    s = TransformalyScorer(**TINY, pretrained=False, epochs=0)
    s.fit(images, batch_size=8)
    s.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["config"]["seed"] = 1  # same architecture, other weights (the file hashes still match)
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="pins"):
        models.load_scorer(tmp_path / "m")


def test_weights_file_loads_is_pinned_and_a_tampered_file_is_refused(images, weights, tmp_path) -> None:
    path, net = weights
    assert check_backbone_file(path, ARCH) == models.persistence.sha256_file(path)
    s = TransformalyScorer(**TINY, pretrained=str(path), epochs=0)
    assert s.backbone_source == "file"
    assert torch.equal(s.teacher.backbone.blocks[0].attn.qkv.weight, net.blocks[0].attn.qkv.weight)
    s.fit(images, batch_size=8)
    s.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / MANIFEST).read_text())["config"]
    assert cfg["backbone_source"] == "file" and cfg["backbone_sha256"] == s.backbone_sha256
    assert cfg["weights_sha256"] == models.persistence.sha256_file(path)
    np.testing.assert_array_equal(models.load_scorer(tmp_path / "m").score(images[:3]), s.score(images[:3]))
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    state["blocks.0.attn.qkv.weight"][0, 0] += 0.5  # one value changed
    save_file(state, str(path))
    with pytest.raises(ModelIntegrityError, match="backbone"):
        models.load_scorer(tmp_path / "m")


def test_check_backbone_file_names_what_does_not_fit(weights, tmp_path) -> None:
    path, net = weights
    no_head = {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("head.")}
    save_file(no_head, str(tmp_path / "nohead.safetensors"))
    assert len(check_backbone_file(tmp_path / "nohead.safetensors", ARCH)) == 64  # the head is optional
    broken = {k: v for k, v in no_head.items() if k != "blocks.3.mlp.fc1.bias"}
    broken["extra.weight"] = torch.zeros(2)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['blocks.3.mlp.fc1.bias'\].*unexpected \['extra.weight'\]"):
        check_backbone_file(tmp_path / "broken.safetensors", ARCH)
    with pytest.raises(ValueError, match="shapes"):
        check_backbone_file(path, "vit_small_patch16_224")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="readable"):
        check_backbone_file(tmp_path / "junk.safetensors", ARCH)
    with pytest.raises(FileNotFoundError):
        check_backbone_file(tmp_path / "absent.safetensors", ARCH)
