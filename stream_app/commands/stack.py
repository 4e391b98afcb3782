"""`linewatch stack up|down|status`: the local Kafka + Redis stack (see deploy/localstack.py)."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

console = Console()
stack_app = typer.Typer(help="Local Kafka (KRaft) + Redis without Docker.", no_args_is_help=True)


def _stack(ctx: typer.Context, brokers: int | None = None):
    from deploy.localstack import LocalStack

    return LocalStack.from_settings(ctx.obj, brokers)


def _print_status(statuses) -> bool:
    table = Table(title="linewatch stack")
    for col in ("server", "address", "pid", "running", "healthy", "detail"):
        table.add_column(col)
    for s in statuses:
        table.add_row(s.name, s.address, str(s.pid or "-"), _mark(s.running), _mark(s.healthy), s.detail)
    console.print(table)
    return all(s.healthy for s in statuses)


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


@stack_app.command()
def up(
    ctx: typer.Context,
    brokers: int | None = typer.Option(
        None,
        "--brokers",
        min=1,
        help="Kafka nodes (3: topics replicated 3x, 2 in sync); default: stack.brokers, "
        "or as many as the state dir already holds",
    ),
) -> None:
    """Start Kafka and Redis (idempotent); fetch Kafka's jars with Maven on first use."""
    from deploy.localstack import StackError

    stack = _stack(ctx, brokers)
    started = time.monotonic()
    try:
        if not stack.jars_present():
            console.print(f"fetching Kafka {stack.kafka_version} jars with Maven into {stack.libs_dir} ...")
        statuses = stack.up()
    except StackError as exc:
        console.print(f"[red]stack up failed:[/] {exc}")
        raise typer.Exit(1) from exc
    _print_status(statuses)
    console.print(f"ready in {time.monotonic() - started:.1f} s; state in {stack.state_dir}")
    if stack.brokers > 1:
        console.print(f"clients: LINEWATCH_KAFKA__BOOTSTRAP={stack.bootstrap}")


@stack_app.command()
def fetch(ctx: typer.Context) -> None:
    """Fetch Kafka's broker jars with Maven into the cache (no-op when cached)."""
    from deploy.localstack import StackError

    stack = _stack(ctx)
    try:
        downloaded = stack.fetch_jars()
    except StackError as exc:
        console.print(f"[red]fetch failed:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"{'fetched' if downloaded else 'cached'}: {stack.libs_dir}")


@stack_app.command()
def down(ctx: typer.Context) -> None:
    """Stop Kafka (every node) and Redis started by `stack up`."""
    _stack(ctx).down()
    console.print("stack stopped")


@stack_app.command()
def status(ctx: typer.Context) -> None:
    """Show each server's process and health (a Kafka node: a live broker of the cluster); exit 1 unless all are
    healthy."""
    if not _print_status(_stack(ctx).status()):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
