"""Nothing lost, nothing stuck: workers under steady traffic survive worker, broker and Redis faults.

Short CI variant of benchmarks/reliability.py on a stack of its own (the faults would hurt other tests):
every input offset must end with exactly one verdict (duplicates only with identical content), no worker
may exit by itself, /health must say 503 with a reason while a dependency is away, and a clean stop must
not log a traceback.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from deploy.localstack import LocalStack
from stream_app.ops.drills import Drill, log_problems
from stream_app.ops.processes import port_file, worker_ports
from tests.integration.shared import assert_nothing_lost, drill_settings, own_stack

pytestmark = pytest.mark.integration
F = 4
RATE = 100.0  # events/s, steady through every fault


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with own_stack(tmp_path_factory.mktemp("chaos-stack")) as own:
        yield own


async def test_worker_kill_restart_and_stop_lose_no_verdict(stack, tmp_path):
    """Two workers on one host (one metrics port setting); one is SIGKILLed and replaced (the newcomer's join
    rebalances partitions with batches in flight), then one stops gracefully (2 -> 1)."""
    settings = await drill_settings(stack, tmp_path, F)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    port_file(settings.state_dir, gone.pid).write_text("1")  # a dead worker's leftover: ignored and removed
    drill = Drill(settings, stack, RATE, F, tmp_path)
    first, second = drill.start_worker(), drill.start_worker()
    async with drill:
        await drill.wait_consuming(2)
        ports = worker_ports(settings)
        assert len(ports) == 2 and len(set(ports)) == 2, f"two workers, two metrics ports on one host: {ports}"

        fault = drill.begin("worker SIGKILL + restart (rebalance with batches in flight)")
        drill.signal_worker(first, signal.SIGKILL)
        await asyncio.sleep(1.0)
        drill.start_worker()
        await drill.wait_consuming(2)
        assert len(worker_ports(settings)) == 2, "the killed worker's port file is ignored"
        drill.end(fault)
        await drill.settle(fault)

        fault = drill.begin("worker SIGTERM (scale 2 -> 1)")
        assert await drill.stop_worker(second) == 0
        drill.end(fault)
        await drill.settle(fault)
        counted = await drill.finish()
    assert_nothing_lost(counted, drill)
    problems = log_problems(tmp_path)
    assert problems["producer_closed"] == 0 and problems["tracebacks"] == 0, problems


async def test_redis_and_broker_outages_pause_report_and_resume(stack, tmp_path):
    settings = await drill_settings(stack, tmp_path, F)
    drill = Drill(settings, stack, RATE, F, tmp_path)
    drill.start_worker()
    async with drill:
        await drill.wait_consuming(1)

        fault = await drill.pause("redis", 6, "Redis SIGSTOP 6 s")
        assert fault.health_503 and any("redis" in r for r in fault.health_reasons), fault.health_reasons
        assert fault.max_lag > 0, "lag comes from the broker's end offsets, also while batches fail"
        await drill.crash("redis", 1, "Redis SIGKILL + restart (AOF)")
        fault = await drill.pause("kafka", 7, "broker SIGSTOP 7 s (outputs scored, acks time out)")
        assert fault.health_503, "a stopped broker must show on /health"
        await drill.crash("kafka", 1, "broker SIGKILL + restart on the same log dir")
        counted = await drill.finish()
    assert_nothing_lost(counted, drill)
    problems = log_problems(tmp_path)
    assert problems["errors"] < 200, f"outages must not flood the log: {problems}"
