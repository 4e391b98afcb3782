"""Three brokers: the project's topics keep three copies (two in sync), and killing the broker that leads an
input partition, with traffic flowing and a worker scoring, loses no verdict and stops nothing.

A stack of its own (three KRaft nodes on loopback, started by the `own_stack` harness); the drill is
stream_app/ops/drills.py's, as in test_chaos.py and benchmarks/reliability.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from deploy.localstack import LocalStack
from stream_app.ops.connections import ensure_topics
from stream_app.ops.drills import Drill, kill_partition_leader, log_problems
from tests.integration.shared import (
    assert_nothing_lost,
    chaos_settings,
    drill_settings,
    own_stack,
    topic_replication,
)

pytestmark = pytest.mark.integration
F = 4
RATE = 100.0  # events/s, steady through the fault
PARTITION = 0  # the input partition whose leader is killed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with own_stack(tmp_path_factory.mktemp("cluster"), brokers=3) as stack:
        yield stack


async def test_topics_on_three_brokers_keep_three_copies_two_in_sync(cluster, tmp_path):
    settings = chaos_settings(cluster, tmp_path)
    await ensure_topics(settings)

    for topic in (settings.topics.vectors, settings.topics.scores, settings.topics.alerts):
        assert await topic_replication(settings, topic) == ({3}, 2), topic


async def test_killing_an_input_partitions_leader_loses_no_verdict(cluster, tmp_path):
    settings = await drill_settings(cluster, tmp_path, F)
    drill = Drill(settings, cluster, RATE, F, tmp_path)
    drill.start_worker()
    async with drill:
        await drill.wait_consuming(1)
        await asyncio.sleep(3)  # steady state first
        kill = await kill_partition_leader(drill, cluster, "partition leader SIGKILL + restart", PARTITION, serve_s=4)
        await drill.settle(kill.fault)
        counted = await drill.finish()

    assert kill.successor not in (None, kill.victim), f"another broker leads the partition once {kill.victim} died"
    assert_nothing_lost(counted, drill)
    assert drill.traffic.failed == 0, "every input was accepted, also while a broker was down"
    assert kill.failover_s is not None and kill.restarted is not None
    served = [
        offset
        for (partition, offset), verdict_ms in counted.first_verdict_ms.items()
        if partition == PARTITION and kill.fault.started + kill.failover_s < verdict_ms / 1000 < kill.restarted
    ]
    assert served, "the partition was scored under its new leader before the old one came back"
    problems = log_problems(tmp_path)
    assert problems["tracebacks"] == 0 and problems["producer_closed"] == 0, problems
    print(f"broker {kill.victim} killed; broker {kill.successor} led partition {PARTITION} after "
          f"{kill.failover_s:.1f} s; {len(served)} of its events scored before the restart")  # fmt: skip
