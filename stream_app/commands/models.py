"""`linewatch models list|show|fit|promote|rollback`: the model registry from the command line.

promote and rollback also announce the new production version on the model-updates topic, so running
workers swap to it (`--no-announce` for an offline registry). User errors print one red line and exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

DEFAULT_BACKBONE = "vit_base_patch16_384.orig_in21k_ft_in1k"  # the paper's ViT (= models.transformaly's)
console = Console()
models_app = typer.Typer(help="Model registry: list, inspect, fit, promote, roll back.", no_args_is_help=True)

ANNOUNCE_TIMEOUT_S = 30.0


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (unknown model, bad file, integrity, broker down) into one line and exit 1."""
    from aiokafka.errors import KafkaError

    from models.backbones import BackboneUnavailable

    try:
        yield
    except (UserError, LookupError, ValueError, OSError, KafkaError, TimeoutError, BackboneUnavailable) as exc:
        console.print(f"[red]error:[/] {exc or type(exc).__name__}")
        raise typer.Exit(1) from None


def _registry(ctx: typer.Context):
    from stream_app.registry.versions import Registry

    return Registry(ctx.obj.registry_dir)


def normalize_version(version: str) -> str:
    """Versions are zero-padded directory names; `2` means `0002`.

    >>> normalize_version("2"), normalize_version("0002")
    ('0002', '0002')
    """
    return f"{int(version):04d}" if version.isdigit() else version


def _production_or_none(registry, model: str) -> str | None:
    try:
        return registry.production(model).version
    except LookupError:
        return None


def _known(registry, model: str, version: str | None = None) -> None:
    if model not in registry.models():
        raise UserError(f"no model {model!r} in registry {registry.root} (models: {registry.models() or 'none'})")
    if version is not None and version not in registry.versions(model):
        raise UserError(f"{model} has no version {version} (versions: {registry.versions(model)})")


def _announce(ctx: typer.Context, registry, mv, announce: bool) -> None:
    if not announce:
        console.print("[yellow]not announced[/]: running workers keep their version until restarted")
        return
    from stream_app.registry.announcements import announce_version

    try:
        message = asyncio.run(asyncio.wait_for(announce_version(ctx.obj, registry, mv), ANNOUNCE_TIMEOUT_S))
    except Exception as exc:
        raise UserError(
            f"{mv.model} now points at version {mv.version}, but announcing it on "
            f"{ctx.obj.topics.model_updates} failed ({exc or type(exc).__name__}); workers serve it at their next "
            "check of the production pointer (recovery.model_check_s)"
        ) from exc
    console.print(f"announced on {ctx.obj.topics.model_updates} (sha256 {message['sha256'][:12]}…)")


# ----------------------------------------------------------------------------- list / show


def _kind(manifest: dict[str, Any]) -> str:
    """The kind, with the version's warnings in red (e.g. an untrained camera backbone)."""
    from stream_app.registry.backbones import model_flags

    flags = " ".join(f"[bold red]{flag}[/]" for flag in model_flags(manifest))
    return f"{manifest.get('kind', '-')} {flags}".strip()


def _decision(manifest: dict[str, Any]) -> str:
    return (manifest.get("validation") or {}).get("decision", "-")


def _samples(manifest: dict[str, Any]) -> str:
    window = manifest.get("training_window") or {}
    if counts := window.get("counts"):
        return f"{counts.get('train', '?')}+{counts.get('holdout', '?')}"
    data = manifest.get("training_data") or {}
    return str(data.get("samples", "-"))


@models_app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Every model with its production and latest version."""
    with user_errors():
        _list_models(_registry(ctx))


def _list_models(registry: Any) -> None:
    names = registry.models()
    if not names:
        console.print(f"registry {registry.root} is empty; add a model with `linewatch models fit`")
        return
    table = Table(title=f"models in {registry.root}")
    for col in ("model", "production", "latest", "versions", "kind", "latest decision", "latest created"):
        table.add_column(col, overflow="fold")
    for name in names:
        versions = registry.versions(name)
        latest = registry.manifest(name, versions[-1]) if versions else {}
        table.add_row(
            name, _production_or_none(registry, name) or "[yellow]none[/]", versions[-1] if versions else "-",
            str(len(versions)), _kind(latest), _decision(latest), str(latest.get("created_at", "-"))[:19],
        )  # fmt: skip
    console.print(table)


@models_app.command()
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str | None, typer.Argument(help="a version (default: all versions)")] = None,
) -> None:
    """A model's versions, or one version's manifest (hashes, window, metrics, validation)."""
    registry = _registry(ctx)
    with user_errors():
        version = normalize_version(version) if version else None
        _known(registry, name, version)
        if version is None:
            _show_versions(registry, name)
        else:
            _show_version(ctx, registry, name, version)


def _show_versions(registry, name: str) -> None:
    production = _production_or_none(registry, name)
    table = Table(title=f"{name}: versions (production: {production or 'none'})")
    for col in ("", "version", "created", "kind", "parent", "by", "samples", "decision", "reason"):
        table.add_column(col, overflow="fold")
    for v in registry.versions(name):
        m = registry.manifest(name, v)
        table.add_row(
            "[green]*[/]" if v == production else "", v, str(m.get("created_at", "-"))[:19], _kind(m),
            str(m.get("parent") or "-"), str(m.get("trained_by", "-")), _samples(m), _decision(m),
            (m.get("validation") or {}).get("reason", ""),
        )  # fmt: skip
    console.print(table)
    log = registry.promotions(name)[-5:]
    if log:
        console.print("recent promotions: " + ", ".join(f"{e.get('action', 'promote')} {e['version']}" for e in log))


def _show_version(ctx: typer.Context, registry, name: str, version: str) -> None:
    from stream_app.retraining.decision import calibrated_threshold

    m = registry.manifest(name, version)
    table = Table(title=f"{name} version {version}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("production", "yes" if _production_or_none(registry, name) == version else "no")
    table.add_row("manifest sha256", registry.digest(name, version))
    table.add_row("kind", _kind(m))
    for key in ("created_at", "parent", "trained_by", "trigger"):
        if key in m:
            table.add_row(key, str(m[key]))
    table.add_row("files", "\n".join(f"{f}  {h}" for f, h in m.get("files", {}).items()))
    table.add_row("config", _compact(m.get("config")))
    cal = m.get("calibration_scores")
    if cal:
        arr = np.asarray(cal, np.float64)
        try:
            thr = f"{calibrated_threshold(ctx.obj.thresholds, arr):.4g}"
        except ValueError as exc:
            thr = f"n/a ({exc})"
        table.add_row("calibration", f"n={arr.size} median={np.median(arr):.4g} p99={np.quantile(arr, 0.99):.4g} "
                                     f"initial threshold={thr} ({ctx.obj.thresholds.mode})")  # fmt: skip
    for key in ("training_window", "training_data", "metrics", "validation"):
        if key in m:
            table.add_row(key.replace("_", " "), _compact(m[key]))
    console.print(table)


def _compact(value: Any) -> str:
    """One line per top-level key, values as compact JSON (long normalization arrays left out)."""
    if not isinstance(value, dict):
        return json.dumps(value, default=str)
    return "\n".join(
        f"{k}: {json.dumps(v, sort_keys=True, default=str)}"
        for k, v in sorted(value.items())
        if k != "normalization_stats"
    )


# ----------------------------------------------------------------------------- fit


@models_app.command()
def fit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="model name (routes in settings name the model per source)")],
    data: Annotated[Path, typer.Option("--data", help="normal samples: a [N, F] .npy file or a folder of images")],
    kind: Annotated[
        str | None, typer.Option(help="rvae|vae|rae|ae (vectors); transformaly or patch-memory (images, no weights)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="default: settings retrain.epochs")] = None,
    n_layers: Annotated[int | None, typer.Option(help="autoencoder blocks per tower (default: by data size)")] = None,
    hidden: Annotated[int | None, typer.Option(help="autoencoder hidden width (default: by width)")] = None,
    latent: Annotated[int | None, typer.Option(help="autoencoder latent width (default: by width)")] = None,
    window: Annotated[
        int,
        typer.Option(
            min=1,
            help="autoencoder: rows of one source seen at once (temporal context); --data is "
            "then time-ordered rows, one source after another",
        ),
    ] = 1,
    batch_size: Annotated[int | None, typer.Option()] = None,
    backbone: Annotated[str, typer.Option(help="timm ViT for transformaly")] = DEFAULT_BACKBONE,
    weights: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="transformaly: backbone weights (.safetensors) for air-gapped sites"),
    ] = None,
    random_backbone: Annotated[
        bool, typer.Option("--random-backbone", help="transformaly: untrained backbone (tests and demos only)")
    ] = False,
    img_size: Annotated[int | None, typer.Option(help="transformaly input size (default: the backbone's)")] = None,
    n_blocks: Annotated[int, typer.Option(help="transformaly: last N blocks get students")] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: settings, else CUDA if available)")] = None,
    promote_: Annotated[bool, typer.Option("--promote", help="make it the production version")] = False,
    announce: Annotated[bool, typer.Option(help="announce a promotion on model-updates")] = True,
) -> None:
    """Fit a model on a file of normal samples and publish it as the next version."""
    from models import IMAGE_KINDS, VECTOR_KINDS, create_scorer
    from stream_app.registry.versions import check_name
    from stream_app.retraining.datasets import load_images, load_vectors
    from stream_app.retraining.fitting import backbone_weights, fit_and_publish

    settings = ctx.obj
    registry = _registry(ctx)
    with user_errors():
        check_name("model name", name)  # before a fit that may take hours
        if not data.exists():
            raise UserError(f"{data} does not exist; expected a .npy file or a folder of images")
        images = data.is_dir()
        if not images and data.suffix != ".npy":
            raise UserError(f"{data}: expected a .npy file of [N, F] samples or a folder of images")
        kind = kind or ("transformaly" if images else "rvae")
        if kind not in (IMAGE_KINDS if images else VECTOR_KINDS):
            raise UserError(f"--kind {kind} does not fit {'images' if images else 'vectors'} "
                            f"(vectors: {', '.join(VECTOR_KINDS)}; images: {', '.join(IMAGE_KINDS)})")  # fmt: skip
        if images and window != 1:
            raise UserError(f"--window {window} is for vector models (temporal context); {kind} scores frames")
        X = load_images(data) if images else load_vectors(data)
        options: dict[str, Any] = {"seed": seed, "device": device or settings.device}
        if kind == "transformaly":
            pretrained = backbone_weights(registry.root, backbone, weights, random_backbone)
            options |= {"backbone": backbone, "pretrained": pretrained, "img_size": img_size, "n_blocks": n_blocks}
        elif not images:
            options |= {"n_features": X.shape[1], "n_layers": n_layers, "hidden": hidden, "latent": latent,
                        "window": window}  # fmt: skip
        scorer = create_scorer(kind, **options)
        temporal = f", window {window}" if window > 1 else ""
        console.print(f"fitting {kind}{temporal} on {len(X)} samples of shape {list(X.shape[1:])} from {data}")
        mv = fit_and_publish(registry, name, scorer, X, data, epochs or settings.retrain.epochs, batch_size)
        console.print(f"published {name} version [bold]{mv.version}[/] at {mv.path}")
        if promote_:
            registry.promote(name, mv.version)
            console.print(f"{name} production -> {mv.version}")
            _announce(ctx, registry, mv, announce)


# ----------------------------------------------------------------------------- promote / rollback


@models_app.command()
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    force: Annotated[bool, typer.Option(help="promote a candidate that failed validation")] = False,
    announce: Annotated[bool, typer.Option(help="announce on model-updates so workers swap")] = True,
) -> None:
    """Make VERSION the production version (hashes verified) and tell running workers."""
    registry = _registry(ctx)
    with user_errors():
        version = normalize_version(version)
        _known(registry, name, version)
        previous = _production_or_none(registry, name)
        mv = registry.promote(name, version, force=force)
        console.print(f"{name} production: {previous or 'none'} -> {mv.version}")
        _announce(ctx, registry, mv, announce)


@models_app.command()
def rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    announce: Annotated[bool, typer.Option(help="announce on model-updates so workers swap")] = True,
) -> None:
    """Serve the version that was in production before the current one."""
    registry = _registry(ctx)
    with user_errors():
        _known(registry, name)
        previous = _production_or_none(registry, name)
        mv = registry.rollback(name)
        console.print(f"{name} production: {previous} -> {mv.version} (rolled back)")
        _announce(ctx, registry, mv, announce)


@models_app.command()
def label(
    ctx: typer.Context,
    alert: Annotated[list[str], typer.Option("--alert", help="an alert id (repeat for several)")],
    false_alarm: Annotated[
        bool, typer.Option("--false-alarm", help="the alerts were normal (default: real defects)")
    ] = False,
    note: Annotated[str, typer.Option(help="why, for the record")] = "",
) -> None:
    """Label alerts as real defects (they join the model's regression set) or false alarms (training data).

    The same labels the console gives; the retraining agent reads them at its next cycle.
    """
    from stream_app.alerts.labels import label_alerts

    kind = "false_alarm" if false_alarm else "real_defect"
    with user_errors():
        labels = asyncio.run(label_alerts(ctx.obj, alert, kind, note))
    for lab in labels:
        console.print(f"{lab.alert_id} ({lab.model} {lab.source}): {kind} -> {ctx.obj.topics.labels}")


backbone_app = typer.Typer(help="Pretrained backbones kept in the registry by hash.", no_args_is_help=True)
models_app.add_typer(backbone_app, name="backbone")


@backbone_app.command("import")
def backbone_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(dir_okay=False, help="a .safetensors file of the architecture's weights")],
    arch: Annotated[str, typer.Option("--arch", help="timm architecture the file must load into")] = DEFAULT_BACKBONE,
) -> None:
    """Check FILE loads into ARCH and keep it in the registry by sha256, for every worker to load the same bytes."""
    from stream_app.registry.backbones import BackboneStore

    with user_errors():
        stored = BackboneStore(ctx.obj.registry_dir).import_file(file, arch)
    console.print(f"stored {arch} weights sha256 [bold]{stored.stem}[/] at {stored}")
    console.print(f"fit with: linewatch models fit NAME --data FOLDER --backbone {arch} --weights {stored}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.add_typer(models_app, name="models")
