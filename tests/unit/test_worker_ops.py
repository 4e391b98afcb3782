"""The worker's operational pieces without servers: metrics ports, port files, log throttling, health."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from stream_app.ops.health import HealthState
from stream_app.ops.logthrottle import RepeatFilter
from stream_app.ops.metrics import WorkerMetrics, serve_http
from stream_app.ops.processes import live_port_files, port_file


def ok_health() -> dict:
    return {"ok": True}


async def test_a_second_worker_on_the_same_port_takes_the_next_free_one():
    metrics = WorkerMetrics()
    first, port = await serve_http(metrics, "127.0.0.1", 0, ok_health)
    try:
        second, next_port = await serve_http(metrics, "127.0.0.1", port, ok_health, tries=4)
        await second.cleanup()
    finally:
        await first.cleanup()
    assert next_port != port and port < next_port < port + 4


async def test_no_free_port_in_the_range_is_a_clear_error_naming_the_setting():
    metrics = WorkerMetrics()
    first, port = await serve_http(metrics, "127.0.0.1", 0, ok_health)
    try:
        with pytest.raises(OSError, match="LINEWATCH_METRICS_PORT"):
            await serve_http(metrics, "127.0.0.1", port, ok_health, tries=1)
    finally:
        await first.cleanup()


def test_port_files_of_dead_workers_are_removed_and_ignored(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    port_file(tmp_path, dead.pid).write_text("9999")
    port_file(tmp_path).write_text("1234")  # this process: alive
    assert live_port_files(tmp_path) == [port_file(tmp_path, os.getpid())]
    assert not port_file(tmp_path, dead.pid).exists()


def test_identical_errors_are_logged_once_per_interval_with_a_count():
    now = [0.0]
    throttle = RepeatFilter(30.0, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, None, None)

    passed = [throttle.filter(record("Unable connect to node 1")) for _ in range(4800)]
    assert sum(passed) == 1
    assert throttle.filter(record("another error")), "a different message is not held back"
    assert all(throttle.filter(record("debug detail", logging.INFO)) for _ in range(3))
    now[0] = 30.0
    later = record("Unable connect to node 1")
    assert throttle.filter(later) and "repeated 4799 times" in later.getMessage()


def test_health_reports_a_partition_with_lag_that_does_not_advance():
    now = [0.0]
    health = HealthState(stall_after_s=20, clock=lambda: now[0])
    health.progress("in/0", 10, 10)  # caught up: nothing to do is not a stall
    now[0] = 100.0
    health.progress("in/0", 10, 10)
    assert health.report() == []
    health.progress("in/0", 10, 3000)  # traffic arrives, the worker does not move
    now[0] = 125.0
    health.progress("in/0", 10, 30000)
    assert health.lag() == {"in/0": 29990}
    assert health.stalled() == {"in/0": 25.0}
    health.forget(["in/0"])
    assert health.report() == []


def test_health_problems_keep_their_first_time_and_clear():
    now = [0.0]
    health = HealthState(stall_after_s=20, clock=lambda: now[0])
    health.problem("redis", "unreachable: TimeoutError")
    now[0] = 12.0
    health.problem("redis", "unreachable: ConnectionError")
    assert health.report() == ["redis: unreachable: ConnectionError (for 12 s)"]
    health.resolved("redis")
    assert not health.has_problem("redis") and health.report() == []


def test_a_throttled_message_still_formats_through_a_formatter_that_rewrites_args():
    """mode's formatter (faust's logging) wraps args that are not a tuple: the count suffix must survive it."""
    now = [0.0]
    throttle = RepeatFilter(1.0, clock=lambda: now[0])
    record = logging.LogRecord("aiokafka", logging.WARNING, __file__, 1, "node %s down", ("1",), None)
    throttle.filter(record)
    throttle.filter(logging.LogRecord("aiokafka", logging.WARNING, __file__, 1, "node %s down", ("1",), None))
    now[0] = 2.0
    later = logging.LogRecord("aiokafka", logging.WARNING, __file__, 1, "node %s down", ("1",), None)
    assert throttle.filter(later)
    later.args = tuple(later.args)  # what mode's ExtensionFormatter does before formatting
    assert logging.Formatter().format(later) == "node 1 down (repeated 1 times in the last 2 s)"


def test_redis_and_kafka_clients_carry_timeouts_from_settings():
    from stream_app.ops.connections import aiokafka_kwargs, redis_client
    from stream_app.settings import Settings

    settings = Settings()
    settings.redis.socket_timeout_s, settings.kafka.request_timeout_ms = 1.5, 7000
    pool = redis_client(settings.redis).connection_pool.connection_kwargs
    assert pool["socket_timeout"] == 1.5 and pool["socket_connect_timeout"] == settings.redis.socket_connect_timeout_s
    assert aiokafka_kwargs(settings.kafka)["request_timeout_ms"] == 7000


def test_metrics_bind_loopback_by_default():
    from stream_app.settings import Settings

    assert Settings().metrics_host == "127.0.0.1"
