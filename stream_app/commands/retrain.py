"""`linewatch retrain [--once MODEL] | retrain trigger MODEL`: the retraining agent and its on-demand trigger."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.console import Console

console = Console()
retrain_app = typer.Typer(
    help="Retraining agent: refit models on recent normal traffic, validate, publish and promote.",
    invoke_without_command=True,
)

DECISION_STYLE = {"promoted": "green", "passed": "green", "skipped": "yellow", "rejected": "red", "failed": "red"}


def _logging(loglevel: str) -> None:
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@retrain_app.callback()
def retrain(
    ctx: typer.Context,
    once: Annotated[
        str | None, typer.Option("--once", metavar="MODEL", help="run one cycle for MODEL and exit")
    ] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="serve only these models")] = None,
    no_guard: Annotated[
        bool, typer.Option("--no-guard", help="with --once: train on everything (experiments)")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: settings, else CUDA if available)")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
) -> None:
    """Run the agent (schedules + control topic) until interrupted, or one cycle with --once."""
    if ctx.invoked_subcommand is not None:
        return
    from aiokafka.errors import KafkaError

    from stream_app.retraining.agent import RetrainAgent

    _logging(loglevel)
    agent = RetrainAgent(ctx.obj, device=device)
    if once is None:
        try:
            asyncio.run(agent.run(model or None))
        except KeyboardInterrupt:
            console.print("retraining agent stopped")
        return
    try:
        result = asyncio.run(agent.run_cycle(once, trigger="cli", guard=False if no_guard else None))
    except (LookupError, ValueError, KafkaError, OSError, TimeoutError) as exc:  # ValueError: a bad model name
        console.print(f"[red]error:[/] {exc or type(exc).__name__}")
        raise typer.Exit(1) from None
    style = DECISION_STYLE.get(result.decision, "white")
    version = f" version {result.version} (parent {result.parent})" if result.version else ""
    console.print(f"{once}: [{style}]{result.decision}[/]{version}: {result.reason}")
    if result.decision == "failed":
        raise typer.Exit(1)


@retrain_app.command()
def trigger(ctx: typer.Context, name: Annotated[str, typer.Argument(help="model to retrain")]) -> None:
    """Ask running agents to retrain NAME now (a message on the control topic)."""
    from aiokafka.errors import KafkaError

    from stream_app.retraining.agent import send_trigger

    try:
        asyncio.run(asyncio.wait_for(send_trigger(ctx.obj, name), 30))
    except (KafkaError, OSError, TimeoutError) as exc:
        console.print(f"[red]error:[/] could not reach Kafka at {ctx.obj.kafka.bootstrap}: {exc or type(exc).__name__}")
        raise typer.Exit(1) from None
    console.print(f"retrain of {name} requested on {ctx.obj.topics.control}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.add_typer(retrain_app, name="retrain")
