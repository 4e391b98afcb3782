"""A simulated production line: sensor vectors and camera frames with injected, labelled faults.

Pure numpy (no Kafka): `simulate` (stream_app/commands/simulate.py) puts these samples on the topics, the demo
and the tests fit initial models on `training_samples`. Every sample carries its ground truth (`truth`:
"normal" or the fault name) so a run can score itself.

Sensors: every machine is a pump / motor line of `sim.plant` (the process the sensor-quality benchmark
uses): latent operating variables (speed regime, valve command, ambient temperature, tank level, grid
voltage) drive correlated sensors through pump physics, one row per event. Machines are sisters: each has
its pump constants a little off the reference (`Pump.varied`), so one model serves the fleet while
thresholds stay per source. `n_features` picks the channels (`plant.channel_sensors`: 13 is every sensor
once). Faults are episodes of the plant's families (`plant.FAMILIES`: offset, drift, stuck, spikes,
bearing, cavitation, corr_break, valve), each changing the sensors `plant.FAMILY_SENSORS` names; an event
is labelled with its episode's family (a spikes episode labels only its spiked events), and families
that change none of the vector's channels are not drawn.

Frames: textured surfaces (smoothed noise + a fine periodic weave), uint8 grayscale, with scratches (thin
bright or dark line), spots (blob) and cracks (jagged dark polyline).

Everything is deterministic under a seed: each machine's pump on (seed, source), its dynamics and faults on
(seed, source, stream), so training data ("train") and a later simulation ("live") run the same machines.

>>> sim = LineSimulator(lines=1, machines=2, cameras=1, seed=3)
>>> s = sim.machines[0].next(ts=0.0)
>>> s.source, s.values.shape, s.truth
('line-1/press-1', (8,), 'normal')
>>> sim.cameras[0].next(ts=0.0).image.shape
(64, 64)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from stream_app.sim.plant import (
    FAMILIES,
    SPIKE_SHARE,
    Episode,
    Plant,
    Pump,
    channel_sensors,
    families_for,
    normal_spread,
)

SENSOR_FAULTS = FAMILIES
FRAME_DEFECTS = ("scratch", "spot", "crack")
NORMAL = "normal"

# Episode lengths in events, per family (the benchmark's are 120 rows; a live demo wants more, shorter ones).
EPISODE_LENGTH = {
    "offset": (10, 30),
    "drift": (20, 40),
    "stuck": (10, 30),
    "spikes": (15, 30),
    "bearing": (20, 40),
    "cavitation": (10, 30),
    "corr_break": (10, 30),
    "valve": (15, 35),
}
FAULT_SIZE = (1.0, 3.0)  # an offset, drift or spikes episode is this many times the benchmark's height
COOLDOWN = 40  # normal events after an episode, so incidents can close and thermal lags settle between faults
_BLOCK = 64  # rows the plant produces at a time


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """Independent stream per (seed, keys); strings hashed stably (not Python's salted hash)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng([seed & 0xFFFFFFFF, *ints])


@dataclass(frozen=True)
class SensorSample:
    source: str
    ts: float
    values: np.ndarray  # float32 [F]
    truth: str


@dataclass(frozen=True)
class FrameSample:
    source: str
    ts: float
    image: np.ndarray  # uint8 [H, W]
    truth: str


class SensorMachine:
    """One machine's sensor stream: the plant row by row, with fault episodes starting at a rate that makes
    about `fault_rate` of events faulty (a third at most: episodes need their cooldown), families dealt
    like cards (each once per round, shuffled), and `drift`
    moving every channel by that many normal spreads per 1000 events along a fixed direction (for
    retraining demos).

    >>> m = SensorMachine("line-1/press-1", seed=1, fault_rate=0.0)
    >>> [s.truth for s in m.take(3)]
    ['normal', 'normal', 'normal']
    """

    def __init__(
        self,
        source: str,
        seed: int = 0,
        fault_rate: float = 0.0,
        drift: float = 0.0,
        faults: Sequence[str] = SENSOR_FAULTS,
        stream: str = "live",
        n_features: int = 8,
    ):
        if not 0.0 <= fault_rate < 0.5:
            raise ValueError(f"fault_rate must be in [0, 0.5), got {fault_rate}")
        unknown = set(faults) - set(SENSOR_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; expected some of {SENSOR_FAULTS}")
        channels = channel_sensors(n_features)
        visible = families_for(channels)
        self.source, self.fault_rate, self.drift = source, fault_rate, drift
        self.faults = tuple(f for f in faults if f in visible)
        if fault_rate > 0 and not self.faults:
            raise ValueError(f"none of the faults {list(faults)} changes the {n_features} channels simulated")
        own = _rng(seed, "machine", source)
        self.plant = Plant(_rng(seed, "dynamics", source, stream), Pump().varied(own), channels)
        direction = own.normal(0.0, 1.0, len(channels))
        self.drift_step = direction / np.linalg.norm(direction) * normal_spread()[channels] / 1000.0
        self.fault_rng = _rng(seed, "faults", source, stream)
        self.episodes: list[Episode] = []  # drawn and not yet over
        self._deck: list[str] = []
        self.count = 0
        self._rows = np.empty((0, len(channels)))
        self._labels = np.empty(0, int)
        self._free = COOLDOWN  # the first row where the next episode may start
        lengths = [EPISODE_LENGTH[f] for f in self.faults]
        occupied = float(np.mean([(lo + hi) / 2 for lo, hi in lengths])) if lengths else 1.0
        share = [SPIKE_SHARE if f == "spikes" else 1.0 for f in self.faults]
        labelled = float(np.mean([s * (lo + hi) / 2 for s, (lo, hi) in zip(share, lengths, strict=True)] or [1.0]))
        # an episode starts with probability p on each row after the cooldown, so a cycle (wait 1/p - 1, episode,
        # cooldown) holds `labelled` faulty events out of labelled / fault_rate
        wait = labelled / fault_rate - occupied - COOLDOWN + 1 if fault_rate > 0 else np.inf
        self._p_start = 1.0 / max(wait, 1.0)

    @property
    def channels(self) -> np.ndarray:
        return self.plant.channels

    def _schedule(self, until: int) -> None:
        """Draw the episodes that start before row `until`."""
        if not self.faults or self.fault_rate <= 0:
            return
        rng = self.fault_rng
        while self._free < until:
            start = self._free + int(rng.geometric(self._p_start)) - 1
            if start >= until:
                self._free = until  # no start before `until`; the wait is memoryless, so draw afresh from there
                return
            if not self._deck:  # every family once, in a shuffled order, then again: a short run sees them all
                self._deck = [str(f) for f in rng.permutation(self.faults)]
            family = self._deck.pop()
            lo, hi = EPISODE_LENGTH[family]
            ep = Episode(family, start, int(rng.integers(lo, hi + 1)), float(rng.uniform(*FAULT_SIZE)))
            self.episodes.append(ep)
            self._free = ep.stop + COOLDOWN

    def _advance(self) -> tuple[np.ndarray, str]:
        """The next reading (raw units, float64) and its label; the plant runs a block at a time."""
        if not len(self._rows):
            t0 = self.plant.t
            self._schedule(t0 + _BLOCK)
            self._rows, self._labels = self.plant.run(_BLOCK, [e for e in self.episodes if e.stop > t0])
            self.episodes = [e for e in self.episodes if e.stop > t0 + _BLOCK]
        values, label = self._rows[0] + self.drift * self.count * self.drift_step, int(self._labels[0])
        self._rows, self._labels = self._rows[1:], self._labels[1:]
        self.count += 1
        return values, FAMILIES[label - 1] if label else NORMAL

    def next(self, ts: float) -> SensorSample:
        values, truth = self._advance()
        return SensorSample(self.source, ts, values.astype(np.float32), truth)

    def take(self, n: int, t0: float = 0.0, dt: float = 0.01) -> list[SensorSample]:
        return [self.next(t0 + i * dt) for i in range(n)]


# ------------------------------------------------------------------ frames


@dataclass(frozen=True)
class SurfaceType:
    """A camera's surface texture: smooth mottling plus a fine periodic weave at a fixed angle."""

    size: int
    mean: float
    mottle: float
    weave: float
    freq: float
    angle: float

    @classmethod
    def create(cls, size: int = 64, seed: int = 0, source: str = "") -> SurfaceType:
        rng = _rng(seed, "surface", source)
        return cls(
            size=size,
            mean=float(rng.uniform(110, 140)),
            mottle=float(rng.uniform(8, 12)),
            weave=float(rng.uniform(5, 8)),
            freq=float(rng.uniform(0.18, 0.3)),
            angle=float(rng.uniform(0, np.pi)),
        )


class SurfaceCamera:
    """A line camera looking at a moving textured surface; about `defect_rate` of frames hold a defect.

    >>> cam = SurfaceCamera("line-1/cam-1", seed=0, defect_rate=0.0, size=32)
    >>> f = cam.next(ts=1.0)
    >>> f.image.dtype, f.image.shape, f.truth
    (dtype('uint8'), (32, 32), 'normal')
    """

    def __init__(
        self,
        source: str,
        seed: int = 0,
        defect_rate: float = 0.1,
        size: int = 64,
        defects: Sequence[str] = FRAME_DEFECTS,
        stream: str = "live",
    ):
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        unknown = set(defects) - set(FRAME_DEFECTS)
        if unknown:
            raise ValueError(f"unknown defects {sorted(unknown)}; expected some of {FRAME_DEFECTS}")
        self.source, self.defect_rate, self.defects = source, defect_rate, tuple(defects)
        self.surface = SurfaceType.create(size, seed, source)
        self.rng = _rng(seed, "frames", source, stream)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        s = self.surface
        self._u = xx * np.cos(s.angle) + yy * np.sin(s.angle)
        self._v = -xx * np.sin(s.angle) + yy * np.cos(s.angle)

    def normal_image(self) -> np.ndarray:
        """A fresh patch of the surface (float64, before defects and quantisation)."""
        s, rng = self.surface, self.rng
        mottle = gaussian_filter(rng.normal(0.0, 1.0, (s.size, s.size)), sigma=4.0, mode="wrap")
        mottle *= s.mottle / (mottle.std() + 1e-9)
        phase = rng.uniform(0, 2 * np.pi, 2)
        weave = np.sin(2 * np.pi * s.freq * self._u + phase[0]) * np.sin(2 * np.pi * s.freq * self._v + phase[1])
        grain = rng.normal(0.0, 2.0, (s.size, s.size))
        return s.mean + mottle + s.weave * weave + grain

    def next(self, ts: float) -> FrameSample:
        image = self.normal_image()
        truth = NORMAL
        if self.defects and self.rng.random() < self.defect_rate:
            truth = str(self.rng.choice(self.defects))
            image = image + _DEFECT_PAINTERS[truth](self.surface.size, self.rng)
        return FrameSample(self.source, ts, np.clip(np.rint(image), 0, 255).astype(np.uint8), truth)

    def take(self, n: int, t0: float = 0.0, dt: float = 0.5) -> list[FrameSample]:
        return [self.next(t0 + i * dt) for i in range(n)]


def _draw(size: int, points: list[tuple[float, float]], width: int) -> np.ndarray:
    """A float mask in [0, 1] of a polyline through `points` (Pillow draws, numpy keeps the data)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).line(points, fill=255, width=width, joint="curve")
    return np.asarray(img, dtype=np.float64) / 255.0


def _scratch(size: int, rng: np.random.Generator) -> np.ndarray:
    length = rng.uniform(0.45, 0.75) * size
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    mask = _draw(size, [(cx - dx, cy - dy), (cx + dx, cy + dy)], width=max(1, size // 40))
    return float(rng.choice([-1.0, 1.0])) * rng.uniform(55, 75) * gaussian_filter(mask, 0.5)


def _spot(size: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(0.06, 0.11) * size
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
    return float(rng.choice([-1.0, 1.0])) * rng.uniform(60, 85) * blob


def _crack(size: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(6, 10))
    x, y = rng.uniform(0.15, 0.4, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    step = size * rng.uniform(0.06, 0.09)
    for _ in range(n):
        heading += rng.uniform(-0.9, 0.9)
        x = float(np.clip(x + step * np.cos(heading), 1, size - 2))
        y = float(np.clip(y + step * np.sin(heading), 1, size - 2))
        points.append((x, y))
    return -rng.uniform(70, 90) * _draw(size, points, width=max(1, size // 32))


_DEFECT_PAINTERS = {"scratch": _scratch, "spot": _spot, "crack": _crack}


# ------------------------------------------------------------------ a line, and training data


def sensor_sources(lines: int, machines: int) -> list[str]:
    return [f"line-{i}/press-{j}" for i in range(1, lines + 1) for j in range(1, machines + 1)]


def camera_sources(lines: int, cameras: int) -> list[str]:
    return [f"line-{i}/cam-{k}" for i in range(1, lines + 1) for k in range(1, cameras + 1)]


class LineSimulator:
    """All machines and cameras of `lines` production lines, built from one seed."""

    def __init__(
        self,
        lines: int = 2,
        machines: int = 2,
        cameras: int = 1,
        n_features: int = 8,
        fault_rate: float = 0.02,
        defect_rate: float = 0.1,
        drift: float = 0.0,
        image_size: int = 64,
        seed: int = 0,
        stream: str = "live",
    ):
        self.machines = [
            SensorMachine(src, seed, fault_rate, drift, stream=stream, n_features=n_features)
            for src in sensor_sources(lines, machines)
        ]
        self.cameras = [
            SurfaceCamera(src, seed, defect_rate, image_size, stream=stream) for src in camera_sources(lines, cameras)
        ]


def normal_vectors(n: int, n_features: int = 8, lines: int = 2, machines: int = 2, seed: int = 0) -> np.ndarray:
    """`n` fault-free vectors [n, F] float32, spread over the machines a `LineSimulator` with the same seed runs."""
    sim = LineSimulator(lines, machines, 0, n_features, fault_rate=0.0, seed=seed, stream="train")
    out = np.empty((n, n_features), dtype=np.float32)
    for i in range(n):
        out[i] = sim.machines[i % len(sim.machines)].next(0.0).values
    return out


def normal_images(n: int, size: int = 64, lines: int = 2, cameras: int = 1, seed: int = 0) -> np.ndarray:
    """`n` defect-free frames [n, H, W] uint8 from the cameras a `LineSimulator` with the same seed runs."""
    sim = LineSimulator(lines, 0, cameras, defect_rate=0.0, image_size=size, seed=seed, stream="train")
    return np.stack([sim.cameras[i % len(sim.cameras)].next(0.0).image for i in range(n)])


def training_samples(
    n_vectors: int,
    n_images: int,
    n_features: int = 8,
    image_size: int = 64,
    seed: int = 0,
    lines: int = 2,
    machines: int = 2,
    cameras: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Normal data to fit initial models: (vectors [N, F] float32, images [M, H, W] uint8), from the machines
    and cameras a `LineSimulator(lines, machines, cameras, seed=seed)` runs (separate noise draws)."""
    return (
        normal_vectors(n_vectors, n_features, lines=lines, machines=machines, seed=seed),
        normal_images(n_images, image_size, lines=lines, cameras=cameras, seed=seed),
    )
