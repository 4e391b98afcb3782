"""Starting linewatch services as child processes with a given Settings object (demo and tests).

The settings travel as a JSON config file, so a child sees exactly the parent's configuration,
including values that came from code rather than the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from deploy.localstack import pid_alive
from stream_app.settings import REVEAL_SECRETS, Settings

PORT_FILES = "worker-*.port"  # a worker writes its bound metrics/health port here, in settings.state_dir


def port_file(state_dir: Path, pid: int | None = None) -> Path:
    """Where the worker process `pid` (this one by default) on this host writes its metrics/health port."""
    return Path(state_dir) / PORT_FILES.replace("*", f"{socket.gethostname()}-{pid or os.getpid()}")


def live_port_files(state_dir: Path) -> list[Path]:
    """Port files of live workers; those of this host's dead workers (SIGKILLed, no goodbye) are removed.
    Files of other hosts (a shared state dir) are kept: their processes cannot be checked from here."""
    host = socket.gethostname()
    live = []
    for path in sorted(Path(state_dir).glob(PORT_FILES)):
        owner_host, _, pid = path.stem.removeprefix("worker-").rpartition("-")
        is_pid = pid.isdigit() and int(pid) < 2**22  # Linux's largest pid_max; older files named otherwise
        if owner_host == host and is_pid and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            continue
        live.append(path)
    return live


def _config_content_and_path(settings: Settings, directory: Path) -> tuple[bytes, Path]:
    content = settings.model_dump_json(
        exclude={"kafka_bootstrap", "redis_url"}, context={REVEAL_SECRETS: True}
    ).encode()
    return content, directory / f"settings-{hashlib.sha256(content).hexdigest()[:12]}.json"


def write_config(settings: Settings, directory: Path) -> Path:
    """Write the settings as JSON named by their hash: processes started with equal settings share one file."""
    directory.mkdir(parents=True, exist_ok=True)
    content, path = _config_content_and_path(settings, directory)
    if not path.exists():
        tmp = directory / f".{path.name}.{uuid.uuid4().hex[:6]}"
        tmp.touch(mode=0o600)  # it may hold Kafka/Redis credentials
        tmp.write_bytes(content)
        tmp.replace(path)  # atomic: a child never reads a half-written file
    return path


def remove_config(settings: Settings) -> None:
    """Delete the file `spawn` wrote for these settings, once every process started with them has stopped."""
    _config_content_and_path(settings, Path(settings.state_dir))[1].unlink(missing_ok=True)


def spawn(
    settings: Settings, *command: str, log_file: Path | None = None, inherit_output: bool = False
) -> subprocess.Popen:
    """`python -m stream_app -c <settings.json> <command...>` in its own process group.

    Output goes to `log_file` (default: a new log in the state dir), or with `inherit_output` to this
    process's own stdout/stderr (a supervisor's children: their reasons show where the operator looks).
    """
    state = Path(settings.state_dir)
    config = write_config(settings, state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("REDIS_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    out = None
    if not inherit_output:
        out = open(log_file or state / f"{command[0]}-{uuid.uuid4().hex[:6]}.log", "ab")  # noqa: SIM115 (child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "stream_app", "-c", str(config), *command],
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
        env=env,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM the process group, then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running(settings: Settings, *command: str, log_file: Path | None = None) -> Iterator[subprocess.Popen]:
    proc = spawn(settings, *command, log_file=log_file)
    try:
        yield proc
    finally:
        stop(proc)


def worker_ports(settings: Settings) -> list[int]:
    """Metrics/health ports of the live workers started with these settings (port 0 picks a free one)."""
    ports = []
    for path in live_port_files(Path(settings.state_dir)):
        with contextlib.suppress(FileNotFoundError, ValueError):  # removed or half-written meanwhile
            ports.append(int(path.read_text()))
    return ports


async def wait_consuming(settings: Settings, topic: str, workers: int, timeout_s: float = 90.0) -> list[int]:
    """Ports of `workers` live workers once they hold every partition of `topic` and each holds one (or there are
    fewer partitions than workers): a fleet's start-up and rebalance are over."""
    want = {f"{topic}/{p}" for p in range(settings.topics.partitions)}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held: dict[int, set[str]] = {}
        for port in worker_ports(settings):
            with contextlib.suppress(OSError, ValueError):  # a port file nobody serves (yet, or any more)
                held[port] = set((await asyncio.to_thread(worker_health, port, 2.0)).get("partitions", [])) & want
        holding = sum(1 for h in held.values() if h)
        if len(held) >= workers and holding >= min(workers, len(want)) and set().union(*held.values()) == want:
            return list(held)
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{workers} workers did not take the {len(want)} partitions of {topic} in {timeout_s:.0f} s")


def worker_health(port: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """A worker's /health JSON (blocking; call through asyncio.to_thread from async code)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s) as response:
        return orjson.loads(response.read())
