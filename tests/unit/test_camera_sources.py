"""Live sources without Kafka: Aravis's Fake camera, MP4 files written with PyAV, an RTSP URL nobody serves."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time

import numpy as np
import pytest

from stream_app.feed.captures import Capture, Dropped, Notice, SourceError
from stream_app.feed.genicam import GenicamConfig, GenicamSource
from stream_app.feed.linescan import LineScanAssembler, assemble
from stream_app.feed.sources import threaded
from stream_app.feed.video import VideoSource
from stream_app.ops.backoff import Backoff
from tests.media import clip


def take(items, n: int, kind=Capture) -> list:
    """The first `n` items of `kind` (closing the source after), plus every other item seen before them."""
    got = []
    try:
        for item in items:
            got.append(item)
            if sum(isinstance(i, kind) for i in got) >= n:
                break
    finally:
        items.close()
    return got


def captures(items) -> list[Capture]:
    return [i for i in items if isinstance(i, Capture)]


def fake(**kwargs) -> GenicamSource:
    return GenicamSource(GenicamConfig("Fake_1", frame_rate=100, **kwargs), Backoff(0.1, 0.2, give_up_s=0))


def test_fake_genicam_camera_streams_frames_with_its_ids_region_and_format():
    before = time.time()
    got = captures(take(fake(pixel_format="Mono8", roi=(0, 0, 128, 64)).captures(threading.Event()), 5))
    ids = [c.frame_id for c in got]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert all(c.image.shape == (64, 128) and c.image.dtype == np.uint8 for c in got)
    assert got[0].headers["pixel-format"] == "Mono8"
    assert int(got[0].headers["camera-ts-ns"]) > 0 and before - 1 < got[0].ts < time.time() + 1
    assert len({c.image.tobytes() for c in got}) > 1  # the fake camera's pattern moves: real buffers


def test_fake_genicam_bayer_frames_arrive_demosaiced_and_software_triggered():
    source = fake(pixel_format="BayerRG8", roi=(0, 0, 64, 32), trigger="software")
    got = captures(take(source.captures(threading.Event()), 3))
    assert [c.image.shape for c in got] == [(32, 64, 3)] * 3


def test_a_setting_the_camera_refuses_is_a_clear_error_not_a_retry():
    with pytest.raises(SourceError, match=r"offers pixel formats \[.*'Mono8'.*\], not 'Mono12'"):
        take(fake(pixel_format="Mono12").captures(threading.Event()), 1)
    with pytest.raises(SourceError, match="no feature 'NoSuchFeature'"):
        take(fake(features={"NoSuchFeature": "1"}).captures(threading.Event()), 1)


def test_fake_camera_line_strips_assemble_into_frames():
    strips = fake(roi=(0, 0, 64, 4)).captures(threading.Event())
    frames = captures(take(assemble(strips, LineScanAssembler(16, 4)), 3))
    assert [c.image.shape for c in frames] == [(16, 64)] * 3
    assert [c.headers["first-line"] for c in frames] == ["0", "12", "24"]
    assert frames[1].frame_id == frames[0].frame_id + 3  # line 12 came in the 4th strip


def test_an_mp4_yields_every_frame_with_its_number_and_time(tmp_path):
    path = clip(tmp_path / "c.mp4", 20, defects={7}, fps=10)
    before = time.time()
    got = captures(VideoSource(str(path), mono=True).captures(threading.Event()))
    assert [c.frame_id for c in got] == list(range(20))
    assert got[7].image.shape == (64, 64) and got[7].image.max() == 255 and got[6].image.max() < 230
    assert got[3].headers["pts"] == "0.300000"
    assert got[3].ts - got[0].ts == pytest.approx(0.3) and before - 1 < got[0].ts < time.time() + 1
    rgb = captures(take(VideoSource(str(path)).captures(threading.Event()), 1))
    assert rgb[0].image.shape == (64, 64, 3)


def test_fps_keeps_at_most_that_many_frames_per_second_of_video(tmp_path):
    path = clip(tmp_path / "c.mp4", 25, fps=25)
    got = captures(VideoSource(str(path), fps=5).captures(threading.Event()))
    assert [c.frame_id for c in got] == [0, 5, 10, 15, 20]


def test_damaged_packets_are_dropped_and_the_rest_of_the_file_still_flows(tmp_path):
    data = bytearray(clip(tmp_path / "c.mp4", 30).read_bytes())
    middle = data.find(b"mdat") + (len(data) - data.find(b"mdat")) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    items = list(VideoSource(str(damaged)).captures(threading.Event()))
    dropped = [i for i in items if isinstance(i, Dropped)]
    assert dropped and "Invalid data" in dropped[0].reason
    assert 20 <= len(captures(items)) < 30 and captures(items)[-1].frame_id == 29


def test_a_corrupt_or_missing_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(SourceError, match=r"cannot open .*bad.mp4 as video: Invalid data found"):
        list(VideoSource(str(bad)).captures(threading.Event()))
    with pytest.raises(SourceError, match="No such file"):
        list(VideoSource(str(tmp_path / "none.mp4")).captures(threading.Event()))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


def test_an_unreachable_rtsp_url_is_retried_with_backoff_then_given_up_clearly():
    url = f"rtsp://127.0.0.1:{closed_port()}/line-1"
    source = VideoSource(url, backoff=Backoff(0.05, 0.2, give_up_s=0.5))
    notices = []
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"Connection refused.*gave up after retrying for 0.5 s"):
        for item in source.captures(threading.Event()):
            notices.append(item)
    assert [n.reconnect for n in notices] == [True] * len(notices) and len(notices) >= 3
    assert "reconnecting in 0.1 s" in notices[1].message and time.monotonic() - started < 5


async def test_threaded_runs_the_source_in_a_thread_and_stops_it_when_closed():
    stopped = threading.Event()

    def produce(stop: threading.Event):
        try:
            for i in itertools.count():
                yield threading.current_thread().name, i
        finally:
            stopped.set()

    got = []
    async with contextlib.aclosing(threaded(produce)) as items:
        async for name, i in items:
            got.append((name, i))
            if i == 3:
                break
    assert stopped.is_set() and [g[0] for g in got] == ["capture"] * 4  # closed: the thread ran its finally


async def test_threaded_raises_the_source_error_in_the_consumer():
    def produce(stop):
        yield Notice("one")
        raise SourceError("camera gone for good")

    items = []
    with pytest.raises(SourceError, match="camera gone for good"):
        async for item in threaded(produce):
            items.append(item)
    assert items == [Notice("one")]


class Flaky:
    """An Aravis camera whose named call fails once with the error a camera that went away gives."""

    def __init__(self, camera, fail: str, message: str, failed: list) -> None:
        self._camera, self._fail, self._message, self._failed = camera, fail, message, failed

    def __getattr__(self, name: str):
        real = getattr(self._camera, name)
        if name != self._fail or self._failed:
            return real

        def failing(*args, **kwargs):
            self._failed.append(name)
            raise RuntimeError(self._message)  # stands for GLib.Error (also an Exception, with the message)

        return failing


@pytest.mark.parametrize(
    ("call", "message"),
    [("get_payload", "GigEVision read_register timeout"), ("start_acquisition", "GigEVision write_register timeout"),
     ("set_region", "GigEVision read_memory timeout")],
)  # fmt: skip
def test_a_camera_lost_while_it_is_set_up_is_retried_not_a_crash(monkeypatch, call, message):
    """Setting up the stream ran outside the handling that turns a lost camera into a retry (the feeder died
    with a traceback), and a timeout while configuring was taken for a refused setting (the feed ended)."""
    failed: list[str] = []
    config = GenicamConfig("Fake_1", frame_rate=100, pixel_format="Mono8", roi=(0, 0, 64, 32))
    source = GenicamSource(config, Backoff(0.05, 0.1, give_up_s=5))
    real_camera = source._open.__func__

    def flaky_camera(self, ar):

        if call == "set_region" and not failed:  # _open itself calls it: wrap Camera.new for one open
            new = ar.Camera.new
            monkeypatch.setattr(ar.Camera, "new", lambda device: Flaky(new(device), call, message, failed))
            try:
                return real_camera(self, ar)
            finally:
                monkeypatch.setattr(ar.Camera, "new", new)
        camera = real_camera(self, ar)
        return camera if failed else Flaky(camera, call, message, failed)

    monkeypatch.setattr(GenicamSource, "_open", flaky_camera)
    got = take(source.captures(threading.Event()), 2)
    assert failed == [call] and len(captures(got)) == 2
    assert any(isinstance(i, Notice) and "timeout" in i.message for i in got)


def test_every_frame_of_an_animated_gif_has_the_same_colour_layout(tmp_path):
    """Pillow opens a GIF's first frame as a palette image, which was made grey, and later frames as RGB: one
    camera sent a grey first frame and colour frames after it."""
    from PIL import Image

    from stream_app.feed.frames import video_frames
    from stream_app.wire.codecs import decode_frame, frame_headers, headers_dict

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (32, 32), c) for c in colours]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:], duration=40, loop=0)
    frames = list(video_frames(tmp_path / "a.gif"))
    decoded = [decode_frame(f.data, headers_dict(frame_headers("cam-1")), 1 << 20).image for f in frames]
    assert [d.shape for d in decoded] == [(32, 32, 3)] * 3
    assert [tuple(int(v) for v in d[0, 0]) for d in decoded] == colours
    grey = [Image.new("L", (32, 32), v) for v in (10, 20)]
    grey[0].save(tmp_path / "g.gif", save_all=True, append_images=grey[1:], duration=40, loop=0)
    shapes = {
        decode_frame(f.data, headers_dict(frame_headers("c")), 1 << 20).image.shape
        for f in video_frames(tmp_path / "g.gif")
    }
    assert shapes == {(32, 32)}  # a grey animation stays grey
