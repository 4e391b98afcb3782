"""Model registry: versioned scorer directories and a production pointer per model name.

Layout: `<root>/<model>/<version>/` (safetensors + manifest.json, nothing executable) and
`<root>/<model>/PRODUCTION` naming the promoted version. The interface is narrow (list, read,
publish, promote, load) so an object store could back it later.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.persistence import MANIFEST, read_manifest, verify_files

PRODUCTION = "PRODUCTION"
HISTORY = "PROMOTIONS"


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    path: Path


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, model: str) -> list[str]:
        """Versions oldest first (they are zero-padded integers)."""
        base = self.root / model
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / MANIFEST).is_file())

    def path(self, model: str, version: str) -> Path:
        return self.root / model / version

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        return read_manifest(self.path(model, version))

    def production(self, model: str) -> ModelVersion:
        pointer = self.root / model / PRODUCTION
        if not pointer.is_file():
            raise LookupError(f"model {model!r} has no production version in {self.root}")
        version = pointer.read_text().strip()
        return ModelVersion(model, version, self.path(model, version))

    def publish(self, model: str, scorer, extra: dict[str, Any] | None = None) -> ModelVersion:
        """Save `scorer` as the next version. Written to a temp dir and renamed, so a crash leaves nothing half-made."""
        base = self.root / model
        base.mkdir(parents=True, exist_ok=True)
        existing = self.versions(model)
        version = f"{(int(existing[-1]) + 1) if existing else 1:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=base))
        try:
            scorer.save(tmp, extra=extra)
            os.replace(tmp, base / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ModelVersion(model, version, base / version)

    def promote(self, model: str, version: str) -> ModelVersion:
        """Point PRODUCTION at `version` (hashes verified first); atomic rename of the pointer file."""
        path = self.path(model, version)
        verify_files(path, read_manifest(path))
        pointer = self.root / model / PRODUCTION
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, pointer)
        with open(self.root / model / HISTORY, "a") as fh:
            fh.write(version + "\n")
        return ModelVersion(model, version, path)

    def load(self, model: str, version: str | None = None, device: str | None = None):
        """Load a version (default: production) with hashes verified; raises on mismatch."""
        from models import load_scorer

        mv = self.production(model) if version is None else ModelVersion(model, version, self.path(model, version))
        return mv, load_scorer(mv.path, device=device)
