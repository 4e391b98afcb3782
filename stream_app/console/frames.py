"""An image alert's camera frame, read back from the frames topic (or its claim-check file) as PNG bytes.

The alert names its input by `origin` {topic, partition, offset}; the record there holds the encoded
image or a `uri` header (claim check, only under `claim_check_dirs`). It is decoded with the worker's own
codec, so the console shows exactly the pixels that were scored, and re-encoded as PNG for the browser.
"""

from __future__ import annotations

from collections import OrderedDict

from stream_app.alerts.origins import origin_of, read_origins
from stream_app.settings import Settings
from stream_app.wire.codecs import BadEvent, decode_frame, encode_image

CACHE_FRAMES = 32  # an operator flips between a few alerts; frames are re-read from Kafka otherwise


class FrameNotFound(LookupError):
    """The frame is gone (retention) or unreadable; the message says which."""


class FrameReader:
    """PNG bytes of an alert's frame, with a small LRU cache."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    async def png(self, alert: dict) -> bytes:
        origin = origin_of(alert)
        if origin in self._cache:
            self._cache.move_to_end(origin)
            return self._cache[origin]
        found = await read_origins(self.settings, [origin])
        record = found.get(origin)
        if record is None:
            raise FrameNotFound(f"no record at {origin[0]}/{origin[1]}@{origin[2]} (deleted by retention?)")
        try:
            event = decode_frame(
                record.value,
                record.headers,
                self.settings.max_image_bytes,
                self.settings.claim_check_dirs,
                default_source=(record.key or b"").decode(errors="replace") or None,
            )
        except BadEvent as exc:
            raise FrameNotFound(f"the frame at {origin[0]}/{origin[1]}@{origin[2]} cannot be shown: {exc}") from None
        png = encode_image(event.image, "png")
        self._cache[origin] = png
        while len(self._cache) > CACHE_FRAMES:
            self._cache.popitem(last=False)
        return png
