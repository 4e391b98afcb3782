"""Small helpers shared by benchmark scripts: where results go, what machine produced them."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Enough to tell two machines' numbers apart: OS, CPU, cores, torch threads, GPU if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
    }
    try:
        import torch

        info |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine() -> str:
    """One line for the `machine` key, e.g. 'AMD EPYC, 2 logical CPUs, torch 2.4 with 2 threads, Linux-...'."""
    i = machine_info()
    parts = [i["cpu"], f"{i['logical_cpus']} logical CPUs"]
    if "torch" in i:
        parts.append(f"torch {i['torch']} with {i['torch_threads']} threads")
    if "gpu" in i:
        parts.append(i["gpu"])
    return ", ".join([*parts, i["platform"]])


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write results/<name>.json (pretty, keys in insertion order) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def save_figure(fig: Any, name: str) -> Path:
    """Save a matplotlib figure to results/<name>.png and close it."""
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def free_port() -> int:
    """A port nothing listens on now (a benchmark's own stack must not meet another job's)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_stack(state_dir: Path) -> Iterator[Any]:
    """A Kafka + Redis of this benchmark's own on free ports (deploy.localstack), stopped on the way out."""
    from deploy.localstack import LocalStack
    from stream_app.settings import Settings

    stack = LocalStack(state_dir=state_dir, cache_dir=Settings().stack.cache_dir.expanduser(), kafka_port=free_port(),
                       controller_port=free_port(), redis_port=free_port())  # fmt: skip
    stack.up()
    try:
        yield stack
    finally:
        stack.down()
