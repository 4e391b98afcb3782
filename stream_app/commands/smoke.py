"""`linewatch smoke`: events through the real stack (produce -> consume -> Redis), with rates."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
