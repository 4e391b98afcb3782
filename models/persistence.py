"""Scorer directories: safetensors weights + a JSON manifest with a sha256 per file.

Nothing here can execute code from disk: tensors come from safetensors and everything else
is JSON. Loading verifies every file's hash against the manifest before reading it, so a
tampered or truncated model is refused instead of scoring silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 1


class ModelIntegrityError(ValueError):
    """A model directory whose files do not match the hashes in its manifest."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_scorer_dir(
    path: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor | np.ndarray],
    calibration_scores: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `tensors` to weights.safetensors and a manifest naming kind, config and hashes.

    `extra` holds JSON-able metadata owned by the caller (metrics, training window...).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    as_torch = {
        name: (
            torch.from_numpy(np.array(t, order="C", copy=True)) if isinstance(t, np.ndarray) else t
        )  # no negative strides
        .detach()
        .cpu()
        .contiguous()
        for name, t in tensors.items()
    }
    save_file(as_torch, str(path / WEIGHTS))
    manifest = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "files": {WEIGHTS: sha256_file(path / WEIGHTS)},
        "calibration_scores": (
            None if calibration_scores is None else np.asarray(calibration_scores, np.float64).tolist()
        ),
        "created_at": datetime.now(UTC).isoformat(),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        **(extra or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a scorer directory: no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: unsupported format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return manifest


def verify_files(path: str | Path, manifest: dict[str, Any]) -> None:
    """Raise ModelIntegrityError unless every file listed in the manifest has its recorded sha256."""
    path = Path(path)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ModelIntegrityError(f"{path}: missing file {name} listed in the manifest")
        actual = sha256_file(file)
        if actual != expected:
            raise ModelIntegrityError(f"{file}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…")


def load_scorer_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Verify hashes, then return (manifest, tensors on CPU)."""
    manifest = read_manifest(path)
    verify_files(path, manifest)
    return manifest, load_file(str(Path(path) / WEIGHTS), device="cpu")
