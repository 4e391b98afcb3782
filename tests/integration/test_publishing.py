"""Publisher: outputs sent as per-partition record batches land where `send` would put them, all acknowledged."""

from __future__ import annotations

import asyncio

from stream_app.ops.connections import ensure_topics, read_records
from stream_app.scoring.publishing import Publisher, output_producer
from stream_app.wire.outputs import Output


def test_batches_keep_keyed_partitions_order_headers_and_split_when_full(make_settings):
    settings = make_settings()
    topic = settings.topics.scores
    keys = [f"line-{i}/m".encode() for i in range(12)]

    async def scenario():
        await ensure_topics(settings, [topic], partitions=3)
        async with output_producer(settings.kafka) as producer:
            expected = {}  # key -> partition chosen by the producer's own send()
            for key in keys:
                meta = await (await producer.send(topic, key=key, value=b"probe"))
                expected[key] = meta.partition
            big = b"x" * 200_000  # several of these overflow one 512 KiB batch
            outputs = [
                Output(topic, keys[i % len(keys)], big if i % 10 == 0 else f"v{i}".encode(), [("n", str(i).encode())])
                for i in range(600)
            ]
            acks = await Publisher(producer).send(outputs)
            assert len(acks) > 3  # one batch per partition at least, more where the big records overflowed
            await asyncio.gather(*acks)
        return expected, await read_records(settings, topic, lambda r: len(r) >= len(keys) + 600, 60)

    expected, records = asyncio.run(scenario())
    published = [r for r in records if r.value != b"probe"]
    assert len(published) == 600
    for r in published:
        assert r.partition == expected[r.key]
    by_key: dict[bytes, list[int]] = {}
    for r in sorted(published, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(int(dict(r.headers)["n"]))
    assert all(ns == sorted(ns) for ns in by_key.values())  # per-key order kept
