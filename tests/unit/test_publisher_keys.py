"""Publisher's key -> partition lookups stay bounded (no broker: a stand-in producer with three partitions)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from aiokafka.partitioner import DefaultPartitioner

from stream_app.scoring.publishing import KEY_CACHE, Publisher


async def test_random_keys_do_not_grow_the_partition_cache_without_bound() -> None:
    """Dead letters keep the input's key: a producer cycling through random sources (what the source cap is
    for) made one cached entry per key, for ever."""
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1, 2})
    publisher = Publisher(SimpleNamespace(client=SimpleNamespace(cluster=cluster)))  # type: ignore[arg-type]
    partition = await publisher._partitioner_for("inspection.deadletter")
    expected = DefaultPartitioner()
    for _ in range(KEY_CACHE * 2 + 10):
        key = os.urandom(16)
        assert partition(key) == expected(key, [0, 1, 2], [0, 1, 2])
    assert len(publisher._partitions["inspection.deadletter"][1]) <= KEY_CACHE
