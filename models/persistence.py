"""Scorer directories: safetensors weights + a JSON manifest with a sha256 per file.

Nothing here can execute code from disk: tensors come from safetensors and everything else
is JSON. Loading verifies every file's hash against the manifest before reading it, so a
tampered or truncated model is refused instead of scoring silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

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
    return read_manifest_bytes(path)[0]


def read_manifest_bytes(path: str | Path, expected_sha256: str | None = None) -> tuple[dict[str, Any], str]:
    """(the manifest, the sha256 of the bytes it was parsed from); ModelIntegrityError when `expected_sha256`
    is given and the bytes read now are not those."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a scorer directory: no {MANIFEST}")
    data = manifest_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelIntegrityError(f"{manifest_path}: sha256 {digest[:12]}… is not the expected {expected_sha256[:12]}…")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path}: expected a JSON object")
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: unsupported format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return manifest, digest


def _listed_files(path: Path, manifest: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """Each file the manifest lists, with its recorded sha256; ModelIntegrityError for one that is missing."""
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ModelIntegrityError(f"{path}: missing file {name} listed in the manifest")
        yield file, expected


def _check_digest(file: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ModelIntegrityError(f"{file}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…")


def verified_files(path: str | Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every file the manifest lists, read once and checked against its recorded sha256: what is parsed later is
    these bytes, never the file read again (it could have been swapped since the check)."""
    out = {}
    for file, expected in _listed_files(Path(path), manifest):
        data = file.read_bytes()
        _check_digest(file, hashlib.sha256(data).hexdigest(), expected)
        out[file.name] = data
    return out


def verify_files(path: str | Path, manifest: dict[str, Any]) -> None:
    """Raise ModelIntegrityError unless every file listed in the manifest has its recorded sha256 (hashed in
    chunks: checking a version, e.g. before a promotion, does not hold a backbone's weights in memory)."""
    for file, expected in _listed_files(Path(path), manifest):
        _check_digest(file, sha256_file(file), expected)


def load_scorer_dir(
    path: str | Path, manifest_sha256: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest, tensors on CPU), parsed from the very bytes whose hashes were checked; `manifest_sha256` pins
    the manifest (a registry checked its listing, or an announcement named it)."""
    manifest, _ = read_manifest_bytes(path, manifest_sha256)
    files = verified_files(path, manifest)
    if WEIGHTS not in files:
        raise ModelIntegrityError(f"{path}: the manifest does not list {WEIGHTS}")
    return manifest, load_tensors(files[WEIGHTS])
