"""`linewatch demo`: the whole product on this machine in a few minutes, scored against ground truth.

Stack up -> fit the initial sensor (RVAE) and camera (Transformaly) models on simulated normal data ->
start a worker and the retraining agent as child processes -> simulate the lines for `duration_s` while
alerts show live -> wait for every event's verdict -> summary (precision/recall against the injected faults,
latency) and a PNG -> stop the children (and the stack, if the demo started it).

Each run uses its own topics, consumer group and Redis prefix (`demo-<tag>`), so runs never mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from stream_app.ops.connections import ensure_topics, read_records
from stream_app.ops.processes import remove_config, spawn, stop, worker_health, worker_ports
from stream_app.registry.versions import Registry
from stream_app.settings import RetrainSchedule, Settings, TopicSettings
from stream_app.sim.evaluation import Verdict, evaluate
from stream_app.sim.plant import SENSORS
from stream_app.wire.codecs import headers_dict

console = Console()


@dataclass(frozen=True)
class DemoPlan:
    duration_s: float = 60.0
    rate: float = 100.0  # sensor vectors per second, all machines together
    fps: float = 1.0  # frames per second per camera
    lines: int = 2
    machines: int = 2
    cameras: int = 1
    fault_rate: float = 0.06  # share of faulty sensor events: an episode per machine every ~15 s at 100 events/s
    n_features: int = len(SENSORS)  # every sensor of the simulated pump line once
    defect_rate: float = 0.2
    image_size: int = 96  # 6x6 ViT patches: small defects stand out (64 px: recall 0.66 at the same FA)
    seed: int = 7
    retrain_every_s: float = 45.0
    risk: float = 1e-4  # SPOT false-alarm risk per event


def demo_settings(base: Settings, out_dir: Path, plan: DemoPlan) -> Settings:
    tag = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
    topics = TopicSettings().prefixed(tag, partitions=2)
    s = base.model_copy(deep=True)
    s.app_id, s.topics = tag, topics
    s.registry_dir, s.state_dir = out_dir / "registry", out_dir / "state"
    s.redis.key_prefix = tag
    s.metrics_port = 0
    s.worker_processes = s.worker_processes or 1  # the demo shares its cores with the agent and the simulator
    s.thresholds.risk = plan.risk
    s.retrain.schedules = [RetrainSchedule(model="sensors", interval_s=plan.retrain_every_s)]
    s.retrain.window_s = 600.0
    s.retrain.guard_margin_s = 2.0  # faults are frequent in the demo; a minute's margin would drop everything
    s.retrain.epochs = 20
    return s


def fit_initial_models(settings: Settings, plan: DemoPlan) -> None:
    """Fit and promote version 0001 of `sensors` and `camera` on simulated normal data (progress bars)."""
    from models import DEFAULT_OFFLINE_IMAGE_KIND, RVAEScorer, create_scorer
    from stream_app.sim.simulator import training_samples

    # the very machines and cameras the simulation runs, on their own noise draws
    vectors, images = training_samples(
        8000, 300, plan.n_features, plan.image_size, plan.seed, plan.lines, plan.machines, plan.cameras
    )
    registry = Registry(settings.registry_dir)
    console.print(f"[bold]fitting[/] sensors: RVAE on {len(vectors)} normal vectors x {vectors.shape[1]} sensors")
    rvae = RVAEScorer(n_features=vectors.shape[1], seed=plan.seed)  # the measured defaults
    rvae.fit(vectors, progress=True)
    registry.promote("sensors", registry.publish("sensors", rvae).version)
    # No pretrained weights can be downloaded here: the camera model is the offline image scorer, which
    # needs none (a ViT with a random backbone would be marked random-backbone everywhere it shows up).
    console.print(
        f"[bold]fitting[/] camera: {DEFAULT_OFFLINE_IMAGE_KIND} (offline image scorer) on {len(images)} frames"
    )
    camera = create_scorer(DEFAULT_OFFLINE_IMAGE_KIND, seed=plan.seed)
    camera.fit(images)
    registry.promote("camera", registry.publish("camera", camera).version)


async def wait_for_worker(settings: Settings, proc: Any, timeout_s: float = 120.0) -> None:
    """Until the worker has loaded its models, started its producer and holds its input partitions."""
    deadline = time.monotonic() + timeout_s
    while not await _consuming(settings):
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}; see {settings.state_dir}/worker-*.log")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not start in time")
        await asyncio.sleep(0.5)


async def _consuming(settings: Settings) -> bool:
    """The worker's /health lists its input partitions once its consumer joined the group. A port file left
    by a worker that was killed (no clean shutdown) answers nothing and is passed over."""
    for port in worker_ports(settings):
        with contextlib.suppress(OSError):
            if (await asyncio.to_thread(worker_health, port, 2.0)).get("partitions"):
                return True
    return False


async def show_alerts_live(settings: Settings, seen: list[dict], max_lines_per_s: float = 4.0) -> None:
    """Print alerts as they arrive (incident open/close always, others rate-limited) until cancelled."""
    from stream_app.alerts.format import format_alert
    from stream_app.alerts.subscribe import subscribe

    budget, last = max_lines_per_s, time.monotonic()
    async for alert in subscribe(settings, "*", from_beginning=True):
        seen.append(alert)
        now = time.monotonic()
        budget = min(max_lines_per_s, budget + (now - last) * max_lines_per_s)
        last = now
        if alert.get("incident_event") or budget >= 1:
            budget -= 1
            console.print(format_alert(alert), highlight=False)


async def read_verdicts(settings: Settings, expected: int, timeout_s: float) -> list[Any]:
    return await read_records(settings, settings.topics.scores, lambda r: len(r) >= expected, timeout_s)


def to_verdicts(records: list[Any]) -> list[Verdict]:
    out = []
    for r in records:
        b = orjson.loads(r.value)
        truth = headers_dict(r.headers).get("truth", b"normal").decode()
        out.append(
            Verdict(
                b["source"],
                b["partition"],
                b["offset"],
                b["ts"],
                b["score"],
                b["threshold"],
                b["anomalous"],
                truth,
                r.timestamp / 1000.0 - b["ts"],
                b["version"],
            )
        )
    return out


def plot_run(verdicts: list[Verdict], path: Path) -> Path:
    """Per source: score timeline, threshold, injected faults (shaded), alerts (red dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({v.source for v in verdicts})
    fig, axes = plt.subplots(len(sources), 1, figsize=(12, 2.2 * len(sources)), sharex=True, squeeze=False)
    t0 = min(v.ts for v in verdicts)
    for ax, source in zip(axes[:, 0], sources, strict=True):
        vs = sorted((v for v in verdicts if v.source == source), key=lambda v: v.ts)
        t = np.array([v.ts - t0 for v in vs])
        score = np.array([v.score for v in vs])
        ax.plot(t, score, lw=0.7, color="tab:blue", label="score")
        ax.plot(t, [v.threshold for v in vs], lw=1.0, color="black", ls="--", label="threshold")
        fault = np.array([v.truth != "normal" for v in vs])
        if fault.any():
            ax.fill_between(t, 0, 1, where=fault, color="orange", alpha=0.3, transform=ax.get_xaxis_transform(),
                            label="injected fault")  # fmt: skip
        flagged = np.array([v.anomalous for v in vs])
        ax.scatter(t[flagged], score[flagged], s=10, color="red", zorder=3, label="alert")
        ax.set_yscale("symlog", linthresh=max(1e-3, float(np.median(np.abs(score))) or 1e-3))
        ax.set_ylabel(source, rotation=0, ha="right", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("seconds since start")
    fig.suptitle("linewatch demo: scores, thresholds, injected faults and alerts per source")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def summary_table(results: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="demo summary (fault level: a fault counts once; event level: every event)")
    table.add_column("metric")
    for kind in results:
        table.add_column(kind, justify="right")
    rows = ["events", "sources", "faults", "flagged", "fault_precision", "fault_recall", "event_precision",
            "event_recall", "latency_p50_ms", "latency_p99_ms"]  # fmt: skip
    for row in rows:
        cells = []
        for r in results.values():
            v = r.get(row)
            cells.append(
                f"{v:.3f}" if isinstance(v, float) and "latency" not in row else f"{v:.0f}" if v is not None else ""
            )
        table.add_row(row, *cells)
    return table


async def run_demo(base: Settings, out_dir: Path, plan: DemoPlan) -> dict[str, Any]:
    from stream_app.sim.producer import run_simulation

    settings = demo_settings(base, out_dir, plan)
    await ensure_topics(settings)
    fit_initial_models(settings, plan)
    worker = spawn(settings, "worker", log_file=out_dir / "worker.log")
    agent = spawn(settings, "retrain", log_file=out_dir / "retrain.log")
    try:
        await wait_for_worker(settings, worker)
        console.print(f"[bold green]worker and retraining agent running[/]; simulating for {plan.duration_s:.0f} s")
        alerts: list[dict] = []
        live = asyncio.create_task(show_alerts_live(settings, alerts))
        sim = await run_simulation(
            settings, lines=plan.lines, machines=plan.machines, cameras=plan.cameras, rate=plan.rate,
            fps=plan.fps, duration=plan.duration_s, fault_rate=plan.fault_rate, defect_rate=plan.defect_rate,
            n_features=plan.n_features, image_size=plan.image_size, seed=plan.seed,
        )  # fmt: skip
        expected = int(sim["vectors"] + sim["frames"])
        console.print(f"simulation done: {sim['vectors']} vectors, {sim['frames']} frames; waiting for verdicts")
        records = await read_verdicts(settings, expected, timeout_s=120)
        await asyncio.sleep(1.0)
        live.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await live
    finally:
        for proc in (agent, worker):
            stop(proc)
        remove_config(settings)
    verdicts = to_verdicts(records)
    is_vector = [orjson.loads(r.value)["topic"] == settings.topics.vectors for r in records]
    by_kind = {
        "sensors": evaluate([v for v, vec in zip(verdicts, is_vector, strict=True) if vec]),
        "camera": evaluate([v for v, vec in zip(verdicts, is_vector, strict=True) if not vec]),
    }
    by_kind["all"] = evaluate(verdicts)
    result = {
        "simulated": sim,
        "verdicts": len(verdicts),
        "missing_verdicts": expected - len(verdicts),
        "alerts_seen": len(alerts),
        "versions": sorted({(v.source.split("/")[0], v.version) for v in verdicts}),
        "results": by_kind,
        "png": str(plot_run(verdicts, out_dir / "demo.png")),
    }
    (out_dir / "summary.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    console.print(summary_table(by_kind))
    for kind in ("sensors", "camera"):
        r = by_kind[kind]
        found = ", ".join(
            f"{t} {round(r['fault_recall_by_truth'][t] * n)}/{n}" for t, n in r["faults_by_truth"].items()
        )
        console.print(f"{kind} faults detected by kind: {found or 'none injected'}")
    console.print(f"plot: {result['png']}   summary: {out_dir / 'summary.json'}")
    return result


def demo_main(base: Settings, out_dir: Path, plan: DemoPlan, keep_stack: bool = False) -> dict[str, Any]:
    """Bring the stack up unless external servers are configured, run the demo, bring down what it started."""
    from deploy.localstack import LocalStack

    external = bool(base.kafka_bootstrap or base.redis_url)
    stack = None if external else LocalStack.from_settings(base)
    started_here = False
    if stack is not None:
        started_here = not all(s.healthy for s in stack.status())
        console.print("[bold]stack[/]: starting Kafka (KRaft) and Redis" if started_here else "[bold]stack[/]: running")
        stack.up()
    try:
        return asyncio.run(run_demo(base, out_dir, plan))
    finally:
        if stack is not None and started_here and not keep_stack:
            with contextlib.suppress(Exception):
                stack.down()
            console.print("[bold]stack[/]: stopped")
