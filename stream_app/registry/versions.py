"""Model registry: versioned scorer directories, a production pointer and a promotion log per model name.

Layout (a filesystem path by default):

    <root>/<model>/<version>/      weights.safetensors + manifest.json, nothing executable
    <root>/<model>/PRODUCTION      the promoted version
    <root>/<model>/PROMOTIONS      JSON lines: every promote/rollback, newest last

The interface is narrow (`ModelStore`: list, read, publish, promote, rollback, load) so an object
store could back it later: versions are immutable once published, and the pointer and log are the
only mutable objects.

`sha256` of a version means the sha256 of its `manifest.json`. The manifest lists the sha256 of
every other file and also holds what the weights alone do not (config, normalization, calibration
scores, from which workers derive thresholds), so one digest pins the whole version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from models.persistence import (
    MANIFEST,
    ModelIntegrityError,
    read_manifest,
    read_manifest_bytes,
    sha256_file,
    verify_files,
)

PRODUCTION = "PRODUCTION"
HISTORY = "PROMOTIONS"
# What a version directory may hold: tensors and JSON. Anything else (a pickle, a script) is refused.
ALLOWED_SUFFIXES = (".safetensors", ".json")
# Model names and versions become path components: letters, digits, `_`, `.`, `-`; never `..`, never hidden.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class InvalidName(ValueError):
    """A model name or version that could not safely name a registry directory."""


def check_name(what: str, value: object) -> str:
    """`value` if it is a safe model name or version (`what` says which, for the message), else InvalidName.

    >>> check_name("version", "0003")
    '0003'
    >>> check_name("version", "../camera/0001")
    Traceback (most recent call last):
    ...
    stream_app.registry.versions.InvalidName: version must match [A-Za-z0-9_.-]{1,128} without '..' or a leading '.', got '../camera/0001'
    """
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value or value.startswith("."):
        raise InvalidName(
            f"{what} must match {NAME_PATTERN.pattern} without '..' or a leading '.', got {value!r}"[:300]
        )
    return value


def _readable_by_all(folder: Path) -> None:
    """A version is read by workers that may run under another uid: mkdtemp made it 0700 and safetensors 0600."""
    folder.chmod(0o755)
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)


def _is_safe_name(value: str) -> bool:
    try:
        check_name("name", value)
    except InvalidName:
        return False
    return True


def version_number(version: str) -> int | None:
    """The integer a version name stands for (`0007` -> 7), None when it is not one (for numeric metrics).

    >>> version_number("0007"), version_number("rc-1")
    (7, None)
    """
    return int(version) if version.isascii() and version.isdigit() else None


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    path: Path


class PromotionConflict(RuntimeError):
    """Production is not the version the caller validated against (compare-and-set on the pointer failed)."""


class ModelStore(Protocol):
    """What the CLI, the retraining agent and the workers need from a registry."""

    def models(self) -> list[str]: ...
    def versions(self, model: str) -> list[str]: ...
    def manifest(self, model: str, version: str) -> dict[str, Any]: ...
    def digest(self, model: str, version: str) -> str: ...
    def production(self, model: str) -> ModelVersion: ...
    def promotions(self, model: str) -> list[dict[str, Any]]: ...
    def publish(self, model: str, scorer: Any, extra: dict[str, Any] | None = None) -> ModelVersion: ...
    def promote(
        self, model: str, version: str, force: bool = False, expected_current: str | None = None
    ) -> ModelVersion: ...
    def rollback(self, model: str) -> ModelVersion: ...
    def load(
        self, model: str, version: str | None = None, device: str | None = None, expected_sha256: str | None = None
    ) -> tuple[ModelVersion, Any]: ...


class Registry:
    """Filesystem `ModelStore`.

    >>> import tempfile
    >>> Registry(tempfile.mkdtemp()).models()
    []
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ reading

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _is_safe_name(p.name))

    def versions(self, model: str) -> list[str]:
        """Versions oldest first: zero-padded integers in numeric order (10000 after 9999), then any other names."""
        base = self._dir(model)
        if not base.is_dir():
            return []
        names = [p.name for p in base.iterdir() if p.is_dir() and _is_safe_name(p.name) and (p / MANIFEST).is_file()]
        return sorted(names, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))

    def _dir(self, model: str) -> Path:
        return self.root / check_name("model name", model)

    def path(self, model: str, version: str) -> Path:
        """The version's directory; InvalidName for names that would leave `<root>/<model>/`."""
        return self._dir(model) / check_name("version", version)

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        return read_manifest(self.path(model, version))

    def digest(self, model: str, version: str) -> str:
        """sha256 of the version's manifest (which itself lists the sha256 of every file)."""
        return sha256_file(self.path(model, version) / MANIFEST)

    def production(self, model: str) -> ModelVersion:
        pointer = self._dir(model) / PRODUCTION
        if not pointer.is_file():
            raise LookupError(f"model {model!r} has no production version in {self.root}")
        version = pointer.read_text().strip()
        return ModelVersion(model, version, self.path(model, version))  # a tampered pointer: InvalidName

    def promotions(self, model: str) -> list[dict[str, Any]]:
        """The promotion log, oldest first: `{version, action, promoted_at, previous}` per entry."""
        log = self._dir(model) / HISTORY
        if not log.is_file():
            return []
        entries = []
        for line in log.read_text().splitlines():
            if line.strip():
                entries.append(json.loads(line) if line.lstrip().startswith("{") else {"version": line.strip()})
        return entries

    def serving_stack(self, model: str) -> list[str]:
        """Promoted versions still reachable by rollback, oldest first (a promote pushes, a rollback pops)."""
        stack: list[str] = []
        for entry in self.promotions(model):
            if entry.get("action") == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != entry["version"]:
                    stack.append(entry["version"])
            elif not stack or stack[-1] != entry["version"]:
                stack.append(entry["version"])
        return stack

    def check_contents(self, model: str, version: str) -> dict[str, Any]:
        """The manifest, after checking the directory holds only listed tensor/JSON files with matching hashes."""
        path = self.path(model, version)
        manifest = read_manifest(path)
        _check_listing(path, manifest)
        verify_files(path, manifest)
        return manifest

    def load(
        self, model: str, version: str | None = None, device: str | None = None, expected_sha256: str | None = None
    ):
        """Load a version (default: production) with every hash verified; raises ModelIntegrityError on mismatch.

        `expected_sha256` (from a model-updates message) must match the manifest's digest.
        """
        from models import load_scorer

        mv = self.production(model) if version is None else ModelVersion(model, version, self.path(model, version))
        manifest, digest = read_manifest_bytes(mv.path)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ModelIntegrityError(
                f"{mv.path}: manifest sha256 {digest[:12]}… does not match the announced {expected_sha256[:12]}…"
            )
        _check_listing(mv.path, manifest)
        # Pinned to the manifest just checked; each file is read once, hashed, and parsed from those bytes.
        return mv, load_scorer(mv.path, device=device, manifest_sha256=digest)

    # ------------------------------------------------------------------ writing

    def publish(self, model: str, scorer, extra: dict[str, Any] | None = None) -> ModelVersion:
        """Save `scorer` as the next version.

        Written to a temp dir and renamed, so a crash or a failed save leaves nothing half-made; two
        publishers racing for the same number both succeed with different numbers.
        """
        base = self._dir(model)
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=base))
        try:
            scorer.save(tmp, extra={**(extra or {}), "model": model})
            _readable_by_all(tmp)
            for _ in range(100):
                numbers = [int(v) for v in self.versions(model) if v.isdigit()]
                version = f"{max(numbers, default=0) + 1:04d}"
                try:
                    os.rename(tmp, base / version)  # fails if another publisher took the number
                except OSError:
                    if not (base / version).exists():
                        raise
                    continue
                return ModelVersion(model, version, base / version)
            raise RuntimeError(f"could not allocate a version number under {base}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def promote(
        self, model: str, version: str, force: bool = False, expected_current: str | None = None
    ) -> ModelVersion:
        """Point PRODUCTION at `version` after verifying its files; a rejected candidate needs `force`.

        `expected_current` makes it a compare-and-set: PromotionConflict unless production is still that
        version (what a candidate was validated against), checked under the pointer's lock.
        """
        manifest = self.check_contents(model, version)
        decision = (manifest.get("validation") or {}).get("decision")
        if decision == "rejected" and not force:
            reason = manifest["validation"].get("reason", "")
            raise ValueError(f"{model} version {version} failed validation ({reason}); use force to promote anyway")
        return self._point(model, version, "promote", expected_current)

    def rollback(self, model: str) -> ModelVersion:
        """Serve the version promoted before the current one (a stack: rolling back twice goes two back)."""
        with self._locked(model):
            stack = self.serving_stack(model)
            if len(stack) < 2:
                raise LookupError(f"model {model!r} has no earlier promoted version to roll back to")
            current, target = stack[-1], stack[-2]
        self.check_contents(model, target)
        return self._point(model, target, "rollback", expected_current=current)  # a promotion meanwhile wins

    def _point(self, model: str, version: str, action: str, expected_current: str | None = None) -> ModelVersion:
        with self._locked(model):
            previous = None
            with contextlib.suppress(LookupError):
                previous = self.production(model).version
            if expected_current is not None and previous != expected_current:
                raise PromotionConflict(
                    f"{model}: production is {previous}, not {expected_current} as expected; {version} not promoted"
                    if action == "promote"
                    else f"{model}: production is {previous}, not {expected_current} as expected; no {action}"
                )
            pointer = self._dir(model) / PRODUCTION
            tmp = pointer.with_suffix(".tmp")
            tmp.write_text(version + "\n")
            os.replace(tmp, pointer)  # atomic: readers see the old or the new version, never half a name
            entry = {
                "version": version,
                "action": action,
                "previous": previous,
                "promoted_at": datetime.now(UTC).isoformat(),
            }
            with open(self._dir(model) / HISTORY, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        return ModelVersion(model, version, self.path(model, version))

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        """Serialise pointer/log updates between processes (CLI and agent) on one host."""
        self._dir(model).mkdir(parents=True, exist_ok=True)
        with open(self._dir(model) / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def update_message(registry: Registry, mv: ModelVersion, promoted_at: float | None = None) -> dict[str, Any]:
    """The `inspection.model-updates` value announcing that `mv` now serves (key: the model name).

    `promoted_at` is epoch seconds; `sha256` is the manifest digest (see the module docstring).
    """
    return {
        "model": mv.model,
        "version": mv.version,
        "sha256": registry.digest(mv.model, mv.version),
        "path": str(mv.path.resolve()),
        "promoted_at": time.time() if promoted_at is None else promoted_at,
    }


def _check_listing(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a version directory holding files its manifest does not list, or listed files of other types."""
    listed = set(manifest.get("files", {}))
    for file in path.iterdir():
        if file.name != MANIFEST and file.name not in listed:
            raise ModelIntegrityError(f"{path}: unexpected file {file.name} not listed in the manifest")
    for name in listed:
        if not name.endswith(ALLOWED_SUFFIXES) or "/" in name or name.startswith("."):
            raise ModelIntegrityError(f"{path}: refusing file {name}: only {ALLOWED_SUFFIXES} files are loaded")
