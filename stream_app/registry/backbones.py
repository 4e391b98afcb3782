"""Backbone weights kept in the registry by content hash, so every worker of a site loads the same bytes.

`<registry>/.backbones/<arch>/<sha256>.safetensors`; a camera model version names that file in its manifest
(with the sha256 it was fitted with), and loading re-checks the hash.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from models.backbones import hub_weights_file
from models.transformaly import RANDOM_BACKBONE, check_backbone_file

BACKBONES_DIR = ".backbones"


class BackboneStore:
    def __init__(self, registry_root: str | Path) -> None:
        self.root = Path(registry_root) / BACKBONES_DIR

    def import_file(self, path: str | Path, arch: str) -> Path:
        """Check that `path` loads into timm `arch`, then keep a copy named by its sha256 (idempotent)."""
        if not arch.replace("_", "").replace(".", "").replace("-", "").isalnum():
            raise ValueError(f"expected a timm architecture name, got {arch!r}")
        sha = check_backbone_file(path, arch)
        target = self.root / arch / f"{sha}.safetensors"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}")
            shutil.copyfile(path, tmp)
            tmp.replace(target)  # atomic: a worker never sees half a file
        return target

    def import_hub(self, arch: str) -> Path:
        """The architecture's hub weights (cache or download), kept in the registry; BackboneUnavailable if none."""
        return self.import_file(hub_weights_file(arch), arch)

    def stored(self) -> list[tuple[str, str, Path]]:
        """(arch, sha256, path) of every kept backbone."""
        return sorted((p.parent.name, p.stem, p) for p in self.root.glob("*/*.safetensors"))


def model_flags(manifest: dict) -> list[str]:
    """Warnings a model version carries wherever it shows up: `random-backbone` for an untrained camera backbone.

    >>> model_flags({"config": {"backbone_source": "random-backbone"}}), model_flags({"config": {}})
    (['random-backbone'], [])
    """
    config = manifest.get("config") or {}
    return [RANDOM_BACKBONE] if config.get("backbone_source") == RANDOM_BACKBONE else []
