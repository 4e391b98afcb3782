"""`linewatch` command line: one entry point, one sub-module per concern under stream_app/commands/.

Each command module exposes `register(app)`; heavy imports (torch, faust) happen inside commands so
`linewatch --help` stays instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="linewatch",
    help="Streaming inspection pipeline: sensor vectors and camera frames -> anomaly scores -> alerts.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = ("stack", "smoke", "worker", "models", "retrain", "simulate", "feed", "alerts", "demo", "console")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file (else $LINEWATCH_CONFIG)")
    ] = None,
) -> None:
    from stream_app.settings import load_settings

    ctx.obj = load_settings(config)


for _name in COMMAND_MODULES:
    importlib.import_module(f"stream_app.commands.{_name}").register(app)


def main() -> None:
    app()
