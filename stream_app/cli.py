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
    from pydantic import ValidationError

    from stream_app.settings import load_settings

    try:
        ctx.obj = load_settings(config)
    except ValidationError as exc:  # one line per wrong setting; the values are not shown (secrets live there)
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in err["loc"]) or "settings"
            typer.echo(f"error: setting {where}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:  # a config file that is missing, unreadable or not TOML
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


for _name in COMMAND_MODULES:
    importlib.import_module(f"stream_app.commands.{_name}").register(app)


def main() -> None:
    app()
