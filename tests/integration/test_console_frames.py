"""An image alert's frame read back from the frames topic: inline bytes, a claim-check file, or gone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image

from stream_app.console.frames import FrameNotFound, FrameReader
from stream_app.console.scene import defect_frame
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.wire.codecs import encode_image, frame_headers

pytestmark = pytest.mark.integration


def alert_at(topic: str, partition: int, offset: int) -> dict:
    return {"alert_id": "a", "kind": "image", "origin": {"topic": topic, "partition": partition, "offset": offset}}


async def test_frames_come_back_inline_or_by_claim_check_and_missing_ones_are_named(make_settings, tmp_path):
    settings = make_settings()
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    settings.claim_check_dirs = [frames_dir]
    await ensure_topics(settings, [settings.topics.frames])
    image, _ = defect_frame(size=64)
    (frames_dir / "f1.png").write_bytes(encode_image(image[::-1]))
    (tmp_path / "outside.png").write_bytes(encode_image(image))
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        send = lambda value, **h: producer.send_and_wait(  # noqa: E731
            settings.topics.frames, key=b"cam-1", value=value, partition=0, headers=frame_headers("cam-1", **h)
        )
        inline = await send(encode_image(image))
        claimed = await send(b"", uri=f"file://{frames_dir / 'f1.png'}")
        outside = await send(b"", uri=f"file://{tmp_path / 'outside.png'}")

    reader = FrameReader(settings)
    for meta, expected in ((inline, image), (claimed, image[::-1])):
        png = await reader.png(alert_at(meta.topic, meta.partition, meta.offset))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    with pytest.raises(FrameNotFound, match="outside the configured claim_check_dirs"):
        await reader.png(alert_at(outside.topic, outside.partition, outside.offset))
    with pytest.raises(FrameNotFound, match="no record at"):
        await reader.png(alert_at(settings.topics.frames, 0, 999))
    with pytest.raises(ValueError, match="expected origin"):
        await reader.png({"alert_id": "b"})
