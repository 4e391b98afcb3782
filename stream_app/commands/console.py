"""`linewatch console`: the operator console web app; `linewatch console hash-password` for login settings."""

from __future__ import annotations

from typing import Annotated

import typer

console_app = typer.Typer(
    help="Operator console: live overview, sources, alerts, models, fleet.", invoke_without_command=True
)


@console_app.callback()
def console_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="bind address (default: console.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: console.port, 8080)")] = None,
) -> None:
    """Serve the console until interrupted (Ctrl-C)."""
    if ctx.invoked_subcommand is not None:
        return
    from stream_app.console.app import serve

    serve(ctx.obj, host, port)


@console_app.command("hash-password")
def hash_password(
    secret: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="the password or token")
    ],
) -> None:
    """Print the scrypt hash to put into console.users.<name> or console.token_hash."""
    from stream_app.console.auth import hash_secret

    typer.echo(hash_secret(secret))


def register(app: typer.Typer) -> None:
    """Add `console` to the root CLI."""
    app.add_typer(console_app, name="console")
