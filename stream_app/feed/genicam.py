"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis 0.8, used from Python with PyGObject.

`GenicamSource(config).captures(stop)` opens the camera, applies the configuration (pixel format, region,
exposure, frame rate, trigger, any other feature by name), streams into a pool of `buffers` preallocated
buffers and yields each complete buffer as a `Capture` (the array, the host's arrival time as `ts`, the
camera's own timestamp and frame id as headers). Incomplete or failed buffers are yielded as `Dropped`.
When the camera stops answering (unplugged, powered off, network gone), the source closes it and reopens it
with exponential backoff, announcing each attempt as a `Notice`.

Device ids are what `arv-tool-0.8` lists (`<vendor>-<model>-<serial>`, or the serial), or a GigE camera's IP
address, which opens it without a broadcast discovery. `Fake_1` is Aravis's built-in simulated camera.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_app.feed.captures import Capture, Dropped, Item, Notice, SourceError, wait_to_retry
from stream_app.feed.encoding import PIXEL_FORMATS, SUPPORTED, to_array
from stream_app.ops.backoff import Backoff

INSTALL_HINT = (
    "GenICam cameras need Aravis 0.8 and PyGObject: `apt-get install gir1.2-aravis-0.8 libgirepository1.0-dev "
    "libcairo2-dev` and `pip install 'pygobject<3.51'` (3.51+ needs girepository-2.0, GLib >= 2.80)"
)


class CameraLost(RuntimeError):
    """The open camera stopped answering; the source reopens it."""


def aravis() -> Any:
    """The `Aravis` 0.8 introspection module, or a SourceError saying how to install it."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{INSTALL_HINT} ({exc})") from None
    return Aravis


def discover() -> list[str]:
    """Device ids of the cameras Aravis finds now (GigE discovery broadcasts on every interface)."""
    ar = aravis()
    ar.update_device_list()
    return [ar.get_device_id(i) for i in range(ar.get_n_devices())]


@dataclass(frozen=True)
class GenicamConfig:
    """What to open and how to set it up; None leaves the camera's current setting."""

    device_id: str
    pixel_format: str | None = None  # PFNC name, e.g. Mono8, Mono12, BayerRG8, RGB8
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height
    exposure_us: float | None = None
    frame_rate: float | None = None  # free run; with trigger="software", the rate of software triggers
    trigger: str | None = None  # None: leave; "off": free run; "software"; or a line, e.g. "Line1"
    features: Mapping[str, str] = field(default_factory=dict)  # any other GenICam feature, set last
    buffers: int = 16
    buffer_timeout_s: float = 1.0
    packet_size: int | None = None  # GigE only; None: Aravis negotiates


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """`x,y,width,height` -> a region, or a ValueError showing the expected form.

    >>> parse_roi("0, 0, 2048, 16")
    (0, 0, 2048, 16)
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected the region as x,y,width,height (e.g. 0,0,2048,16), got {text!r}")
    x, y, w, h = (int(p) for p in parts)
    return x, y, w, h


def parse_features(pairs: list[str]) -> dict[str, str]:
    """`["Name=Value", ...]` -> {Name: Value}, or a ValueError naming the pair without `=`.

    >>> parse_features(["AcquisitionLineRate=10000", "TriggerSelector=LineStart"])
    {'AcquisitionLineRate': '10000', 'TriggerSelector': 'LineStart'}
    """
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected a feature as Name=Value, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def _gerror(exc: Exception) -> str:
    return getattr(exc, "message", None) or str(exc)


UNREACHABLE = ("timeout", "timed out", "not connected", "no answer", "unreachable", "connection")


def _unreachable(exc: Exception) -> bool:
    """Whether a camera's error says it stopped answering (worth a retry) rather than refusing a setting."""
    text = _gerror(exc).lower()
    return any(word in text for word in UNREACHABLE)


class GenicamSource:
    """Frames from one GenICam camera, reopened with backoff when it disappears."""

    def __init__(self, config: GenicamConfig, backoff: Backoff | None = None) -> None:
        self.config = config
        self.backoff = backoff or Backoff(jitter=False)
        self.name = f"genicam:{config.device_id}"
        self.stats: dict[str, int] = {"underruns": 0}  # Aravis n_underruns: data that found no free buffer

    def captures(self, stop: threading.Event) -> Iterator[Item]:
        ar = aravis()
        if self.config.device_id.startswith("Fake_"):
            ar.enable_interface("Fake")
        while not stop.is_set():
            try:
                camera = self._open(ar)
            except SourceError:
                raise  # a setting the camera refuses: retrying cannot help
            except Exception as exc:  # GLib.Error: not found, busy, no answer
                yield from self._wait(stop, f"cannot open camera {self.config.device_id}: {_gerror(exc)}")
                continue
            try:
                yield from self._stream(ar, camera, stop)
            except CameraLost as exc:
                yield from self._wait(stop, f"camera {self.config.device_id} lost: {exc}")

    def _wait(self, stop: threading.Event, why: str) -> Iterator[Notice]:
        return wait_to_retry(self.backoff, stop, why, "retrying")

    # ------------------------------------------------------------------ set-up

    def _open(self, ar: Any) -> Any:
        cfg = self.config
        camera = ar.Camera.new(cfg.device_id)
        try:
            if cfg.pixel_format:
                available = list(camera.dup_available_pixel_formats_as_strings())
                if cfg.pixel_format not in available:
                    raise SourceError(
                        f"camera {cfg.device_id} offers pixel formats {available}, not {cfg.pixel_format!r}"
                    )
                if cfg.pixel_format not in SUPPORTED:
                    raise SourceError(f"pixel format {cfg.pixel_format!r} cannot be converted; use one of {SUPPORTED}")
                camera.set_pixel_format_from_string(cfg.pixel_format)
            if cfg.roi:
                camera.set_region(*cfg.roi)
            if cfg.exposure_us is not None:
                camera.set_exposure_time(cfg.exposure_us)
            if cfg.frame_rate is not None and cfg.trigger in (None, "off"):
                camera.set_frame_rate(cfg.frame_rate)
            if cfg.trigger == "off":
                camera.clear_triggers()
            elif cfg.trigger == "software":
                camera.set_trigger("Software")
            elif cfg.trigger:
                camera.set_trigger(cfg.trigger)
            for name, value in cfg.features.items():
                _set_feature(camera.get_device(), name, value)
            if cfg.packet_size and camera.is_gv_device():
                camera.gv_set_packet_size(cfg.packet_size)
            camera.set_acquisition_mode(ar.AcquisitionMode.CONTINUOUS)
        except SourceError:
            raise
        except Exception as exc:  # GLib.Error: a feature the camera refuses, or a camera that stopped answering
            if _unreachable(exc):
                raise CameraLost(f"no answer while configuring: {_gerror(exc)}") from None  # retried
            raise SourceError(f"camera {cfg.device_id} refused its configuration: {_gerror(exc)}") from None
        return camera

    # ------------------------------------------------------------------ streaming

    def _stream(self, ar: Any, camera: Any, stop: threading.Event) -> Iterator[Item]:
        cfg = self.config
        lost = threading.Event()
        device = camera.get_device()
        handler = device.connect("control-lost", lambda *_: lost.set()) if camera.is_gv_device() else None
        software = cfg.trigger == "software"
        period = 1.0 / cfg.frame_rate if software and cfg.frame_rate else 0.1
        underruns_before = self.stats["underruns"]
        try:  # a camera going away while the stream is set up is lost like one going away mid-stream: retried
            stream = camera.create_stream(None, None)
            if stream is None:
                raise CameraLost("cannot create a stream")
            payload = camera.get_payload()
            for _ in range(cfg.buffers):
                stream.push_buffer(ar.Buffer.new_allocate(payload))
            x, y, width, height = camera.get_region()
            fmt = camera.get_pixel_format_as_string()
            camera.start_acquisition()
            yield Notice(f"streaming {cfg.device_id}: {fmt} {width}x{height} at ({x}, {y}), {cfg.buffers} buffers")
            next_trigger = time.monotonic()
            while not stop.is_set():
                if lost.is_set():
                    raise CameraLost("GigE Vision control connection lost (no heartbeat answer)")
                if software:
                    stop.wait(max(0.0, next_trigger - time.monotonic()))
                    next_trigger = max(next_trigger + period, time.monotonic())
                    camera.software_trigger()
                buffer = stream.timeout_pop_buffer(int(cfg.buffer_timeout_s * 1e6))
                if buffer is None:
                    _probe(camera)  # raises CameraLost when it does not answer; a trigger may just be slow
                    continue
                item = self._item(ar, buffer)
                stream.push_buffer(buffer)  # the data was copied: the camera may fill it again
                # Counted up to the last frame taken: frames lost while the feed shuts down are not underruns.
                self.stats["underruns"] = underruns_before + _info(stream, "n_underruns")
                if isinstance(item, Capture):
                    self.backoff.reset()
                yield item
        except CameraLost:
            raise
        except SourceError:
            raise
        except Exception as exc:  # GLib.Error from a call into a camera that went away
            raise CameraLost(_gerror(exc)) from None
        finally:
            if handler is not None:
                device.disconnect(handler)
            with contextlib.suppress(Exception):  # the camera may be gone; nothing left to stop
                camera.stop_acquisition()

    def _item(self, ar: Any, buffer: Any) -> Item:
        """A popped buffer as a Capture, or Dropped when it is incomplete or not an image we can convert."""
        frame_id = int(buffer.get_frame_id())
        status = buffer.get_status()
        if status != ar.BufferStatus.SUCCESS:
            return Dropped(f"frame {frame_id}: buffer {status.value_nick}", frame_id)
        code = int(buffer.get_image_pixel_format())
        name = PIXEL_FORMATS.get(code)
        if name is None:
            return Dropped(f"frame {frame_id}: pixel format 0x{code:08x} not one of {', '.join(SUPPORTED)}", frame_id)
        try:
            image = to_array(buffer.get_data(), buffer.get_image_width(), buffer.get_image_height(), name)
        except ValueError as exc:
            return Dropped(f"frame {frame_id}: {exc}", frame_id)
        arrived_ns = int(buffer.get_system_timestamp()) or time.time_ns()
        headers = {"camera-ts-ns": str(int(buffer.get_timestamp())), "pixel-format": name}
        return Capture(image, arrived_ns / 1e9, frame_id, headers)


def _probe(camera: Any) -> None:
    """Read one register; a camera that does not answer is lost."""
    try:
        camera.get_integer("Width")
    except Exception as exc:  # GLib.Error: timeout, device gone
        raise CameraLost(f"no buffer and no answer to a register read ({_gerror(exc)})") from None


def _info(stream: Any, name: str) -> int:
    try:
        return int(stream.get_info_uint64_by_name(name))
    except Exception:  # older Aravis or a stream type without this counter
        return 0


def _set_feature(device: Any, name: str, value: str) -> None:
    """Set a GenICam feature from text, by the feature's own type (integer, float, boolean, enumeration...)."""
    node = device.get_feature(name)
    if node is None:
        raise SourceError(f"the camera has no feature {name!r}")
    kind = type(node).__name__  # GcInteger, GcFloat, GcBoolean, GcEnumeration, GcString, GcCommand ...
    if "Integer" in kind:
        device.set_integer_feature_value(name, int(value, 0))
    elif "Float" in kind:
        device.set_float_feature_value(name, float(value))
    elif "Boolean" in kind:
        device.set_boolean_feature_value(name, value.lower() in ("1", "true", "on", "yes"))
    elif "Command" in kind:
        device.execute_command(name)
    else:
        device.set_string_feature_value(name, value)
