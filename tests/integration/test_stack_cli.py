"""`linewatch stack up|status|down` on dedicated ports: healthy, idempotent, no orphans, fast re-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.localstack import pid_alive

pytestmark = pytest.mark.integration


def cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_stack_up_status_down_and_fast_second_up(tmp_path: Path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL")},
        "LINEWATCH_STATE_DIR": str(tmp_path / "state"),
        "LINEWATCH_STACK__KAFKA_PORT": os.environ.get("LINEWATCH_TEST_CLI_KAFKA_PORT", "39092"),
        "LINEWATCH_STACK__CONTROLLER_PORT": os.environ.get("LINEWATCH_TEST_CLI_CONTROLLER_PORT", "39093"),
        "LINEWATCH_STACK__REDIS_PORT": os.environ.get("LINEWATCH_TEST_CLI_REDIS_PORT", "36379"),
        "COLUMNS": "200",
    }
    state = tmp_path / "state"
    try:
        up = cli(["stack", "up"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert cli(["stack", "up"], env).returncode == 0  # idempotent: already running is fine

        status = cli(["stack", "status"], env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("yes") >= 4  # running and healthy, for both servers

        pids = [int((state / f"{name}.pid").read_text()) for name in ("kafka", "redis")]
        assert cli(["stack", "down"], env).returncode == 0
        assert not any(pid_alive(pid) for pid in pids)
        assert cli(["stack", "status"], env).returncode == 1  # unhealthy now

        started = time.monotonic()
        again = cli(["stack", "up"], env)
        elapsed = time.monotonic() - started
        assert again.returncode == 0, again.stdout + again.stderr
        assert "fetching Kafka" not in again.stdout  # jars came from the cache
        assert elapsed < 20, f"second up took {elapsed:.1f} s"
    finally:
        cli(["stack", "down"], env)


def test_port_in_use_is_reported_with_the_setting_to_change(tmp_path: Path):
    import socket

    from deploy.localstack import LocalStack, StackError

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        stack = LocalStack(state_dir=tmp_path, cache_dir=tmp_path / "cache", redis_port=port)
        with pytest.raises(StackError, match=rf"port {port} for Redis is in use.*LINEWATCH_STACK__REDIS_PORT"):
            stack.up(services=("redis",))
