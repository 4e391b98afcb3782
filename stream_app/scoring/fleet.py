"""Several inference processes on one machine: `linewatch worker --processes N`.

Each child is a full worker in the consumer group with its own model copy, one torch thread and its own
metrics/health port (a free one, found through its port file), so N processes use N cores without
contending for one interpreter. The parent only supervises: it restarts a child that dies (with backoff)
and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType

from stream_app.ops.backoff import Backoff
from stream_app.ops.processes import spawn, stop
from stream_app.settings import Settings

log = logging.getLogger(__name__)

RESTART_BASE_S, RESTART_CAP_S = 1.0, 30.0  # a dying child is restarted after ~1, 2, 4... up to 30 s
QUICK_EXIT_S = 60.0  # a child that exits sooner than this after starting counts as failing to start
MAX_QUICK_EXITS = 3


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical CPU count where that is unknown."""
    try:
        cores, physical, core = set(), "0", None
        for line in cpuinfo.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "physical id":
                physical = value
            elif key == "core id":
                core = value
            elif not key and core is not None:
                cores.add((physical, core))
                core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def default_processes(partitions: int, cores: int | None = None) -> int:
    """One process per physical core, never more than the input partitions (an idle member holds none).

    >>> default_processes(partitions=6, cores=16), default_processes(partitions=6, cores=2)
    (6, 2)
    """
    return max(1, min(cores or physical_cores(), partitions))


def child_settings(settings: Settings) -> Settings:
    """A child's settings: any free metrics port (each writes its port file), one torch thread."""
    return settings.model_copy(update={"metrics_port": 0, "torch_threads": 1, "worker_processes": 1})


def run(settings: Settings, processes: int | None = None, loglevel: str = "info") -> int:
    """One worker in this process, or a supervisor of N; N defaults to the settings, else one per core."""
    n = processes or settings.worker_processes or default_processes(settings.topics.partitions)
    if n > 1:
        return supervise(settings, n, loglevel)
    from stream_app.scoring.worker import run_worker

    run_worker(settings, loglevel=loglevel)
    return 0


def supervise(settings: Settings, processes: int, loglevel: str = "info", poll_s: float = 1.0) -> int:
    """Run `processes` worker children until SIGINT/SIGTERM; restart any that exits, with backoff.

    A child that keeps dying right after it starts (a wrong password, a missing topic ACL) will not be fixed
    by restarting: after MAX_QUICK_EXITS such exits in a row the supervisor stops them all and exits with the
    child's code, so the operator (or the orchestrator) sees the failure.
    """
    child = child_settings(settings)
    command = ("worker", "--processes", "1", "--loglevel", loglevel)
    procs: list[subprocess.Popen] = [spawn(child, *command, inherit_output=True) for _ in range(processes)]
    started = [time.monotonic()] * processes
    quick_exits = [0] * processes
    restarts = [Backoff(RESTART_BASE_S, RESTART_CAP_S) for _ in range(processes)]
    next_start = [0.0] * processes
    stopping, code = False, 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("supervising %d worker processes: pids %s", processes, [p.pid for p in procs])
    try:
        while not stopping:
            time.sleep(poll_s)
            for i, proc in enumerate(procs):
                if proc.poll() is None or stopping or time.monotonic() < next_start[i]:
                    continue
                if next_start[i] == 0.0:  # just noticed
                    quick = time.monotonic() - started[i] < QUICK_EXIT_S
                    quick_exits[i] = quick_exits[i] + 1 if quick else 0
                    if not quick:  # it ran a while: start the delays over
                        restarts[i].reset()
                    if quick_exits[i] >= MAX_QUICK_EXITS:
                        log.error("worker process %d exited %d times right after starting (code %s); giving up",
                                  i, quick_exits[i], proc.returncode)  # fmt: skip
                        stopping, code = True, proc.returncode or 1
                        break
                    delay = restarts[i].next_delay()
                    log.warning("worker process %d (pid %d) exited with %s; restart in %.0f s",
                                i, proc.pid, proc.returncode, delay)  # fmt: skip
                    next_start[i] = time.monotonic() + delay
                    continue
                next_start[i] = 0.0
                procs[i] = spawn(child, *command, inherit_output=True)
                started[i] = time.monotonic()
                log.info("worker process %d restarted as pid %d", i, procs[i].pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        codes = [stop(p) for p in procs]
        log.info("worker processes stopped: exit codes %s", codes)
    return code
