"""BatchConsumer across a restart of its consumer (no Kafka: a stand-in client): a batch of the previous run that
settles late must not ack or fail the new run's batch that happens to have the same number."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

import stream_app.scoring.consumer as consumer_module
from stream_app.ops.health import HealthState
from stream_app.ops.metrics import WorkerMetrics
from stream_app.scoring.consumer import BatchConsumer
from stream_app.settings import Settings


async def test_a_batch_settling_after_a_restart_leaves_the_new_runs_batches_alone(monkeypatch) -> None:
    settings = Settings()
    settings.recovery.revoke_wait_s, settings.recovery.retry_base_s, settings.recovery.retry_max_s = 0.05, 0.01, 0.02
    tp = TopicPartition(settings.topics.vectors, 0)
    commits: list[tuple[int, dict]] = []
    seeks: list[tuple[int, int]] = []
    runs: list[Any] = []

    class Client:  # both runs fetch offsets 0-9 (nothing is committed), the first then fails on its next poll
        def __init__(self, **kwargs: Any) -> None:
            self.polls, self.run = 0, len(runs) + 1
            runs.append(self)

        def subscribe(self, topics: list[str], listener: Any) -> None:
            self.listener = listener

        async def start(self) -> None:
            await self.listener.on_partitions_assigned({tp})

        def assignment(self) -> set:
            return {tp}

        async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
            self.polls += 1
            await asyncio.sleep(0.005)
            if self.polls == 1:
                fields = {"topic": tp.topic, "partition": 0, "key": b"s", "value": b"{}", "headers": [], "timestamp": 0}
                return {tp: [SimpleNamespace(offset=o, **fields) for o in range(10)]}
            if self.run == 1 and self.polls == 2:
                raise RuntimeError("a fetch error")  # the consumer is restarted
            return {}

        def seek(self, tp: TopicPartition, offset: int) -> None:
            seeks.append((self.run, offset))

        def pause(self, *tps: TopicPartition) -> None: ...
        def resume(self, *tps: TopicPartition) -> None: ...

        async def commit(self, positions: dict) -> None:
            commits.append((self.run, dict(positions)))

        async def stop(self) -> None: ...

        async def end_offsets(self, tps: Any) -> dict:
            return {}

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", Client)
    acks: list[asyncio.Future] = []

    async def submit(kind: str, records: list) -> list[asyncio.Future]:
        acks.append(asyncio.get_running_loop().create_future())
        return [acks[-1]]

    consumer = BatchConsumer(settings, submit, WorkerMetrics(), HealthState(60), {})
    task = asyncio.create_task(consumer.run())
    try:
        while len(acks) < 2:
            await asyncio.sleep(0.005)
        acks[0].set_result(None)  # the first run's batch is acknowledged only now
        await asyncio.sleep(0.05)
        assert consumer.ledger.committable() == {} and all(run == 1 for run, _ in commits)
        acks[1].set_exception(RuntimeError("the broker refused the new run's outputs"))
        await asyncio.sleep(0.05)
        assert all(run == 1 for run, _ in commits)  # nothing of the new run was committed...
        assert (2, 0) in seeks  # ...its batch failed and is read again from offset 0
    finally:
        await consumer.stop()
        task.cancel()


async def test_a_consumer_whose_start_fails_is_stopped(monkeypatch) -> None:
    """During a broker outage every restart's start() fails; each client must be closed, not leaked."""
    settings = Settings()
    settings.recovery.retry_base_s, settings.recovery.retry_max_s = 0.01, 0.02
    started, stopped = [], []

    class Unreachable:
        def __init__(self, **kwargs: Any) -> None: ...
        def subscribe(self, topics: list[str], listener: Any) -> None: ...

        async def start(self) -> None:
            started.append(self)
            raise ConnectionError("no broker")

        async def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", Unreachable)

    async def submit(kind: str, records: list) -> list[asyncio.Future]:
        return []

    consumer = BatchConsumer(settings, submit, WorkerMetrics(), HealthState(60), {})
    task = asyncio.create_task(consumer.run())
    while len(started) < 3:
        await asyncio.sleep(0.005)
    await consumer.stop()
    await asyncio.wait_for(task, 5)
    assert stopped[: len(started) - 1] == started[: len(started) - 1] and consumer.consumer is None
