"""A simulated production line: sensor vectors and camera frames with injected, labelled faults.

Pure numpy (no Kafka): `simulate` (stream_app/commands/simulate.py) puts these samples on the topics, the demo
and the tests fit initial models on `training_samples`. Every sample carries its ground truth (`truth`:
"normal" or the fault name) so a run can score itself.

Sensors: all machines share one machine type (a latent factor model: F channels = a fixed mixing of a few
smooth latent signals + channel noise, plus a slowly switching operating regime); each machine adds a small
offset of its own, so one model can serve a whole fleet while thresholds stay per source. Faults are sized
in units of a channel's normal spread (`scale`) so that they are clearly anomalous but not absurd:

- spike: one channel jumps 7-10 sigma for one event;
- stuck: one channel frozen at a rail value (mean +- 6 sigma, a saturated or disconnected sensor) for a stretch;
- shift: 3-4 channels shift together by 4.5-6 sigma with mixed signs, breaking their correlation;
- wear: one channel ramps from 5 to 12 sigma over the stretch (labelled from where it leaves its spec).

Frames: textured surfaces (smoothed noise + a fine periodic weave), uint8 grayscale, with scratches (thin
bright or dark line), spots (blob) and cracks (jagged dark polyline).

Everything is deterministic under a seed: the machine type depends on (seed, n_features) only, each
machine's dynamics and faults on (seed, source), so training data and a later simulation agree.

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

SENSOR_FAULTS = ("spike", "stuck", "shift", "wear")
FRAME_DEFECTS = ("scratch", "spot", "crack")
NORMAL = "normal"

_FAULT_LENGTH = {"spike": (1, 1), "stuck": (8, 20), "shift": (8, 20), "wear": (15, 35)}
_MEAN_FAULT_LENGTH = float(np.mean([(lo + hi) / 2 for lo, hi in _FAULT_LENGTH.values()]))
_COOLDOWN = 25  # normal events after a fault, so incidents can close between faults


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


@dataclass(frozen=True)
class MachineType:
    """Parameters shared by every machine of the type: x = base + regime + mixing @ z + noise."""

    base: np.ndarray  # [F] physical-looking operating points
    unit: np.ndarray  # [F] channel units (multiplies everything below)
    mixing: np.ndarray  # [F, L]
    regimes: np.ndarray  # [R, F] regime offsets in channel units
    noise: np.ndarray  # [F] channel noise in channel units
    scale: np.ndarray  # [F] normal spread of each channel in raw units (used to size faults)

    @classmethod
    def create(cls, n_features: int = 8, n_latent: int = 3, n_regimes: int = 3, seed: int = 0) -> MachineType:
        rng = _rng(seed, "machine-type", n_features)
        base = rng.choice([5.0, 20.0, 60.0, 150.0, 1000.0], size=n_features) * rng.uniform(0.8, 1.2, n_features)
        unit = base * rng.uniform(0.01, 0.03, n_features)
        mixing = rng.normal(0.0, 1.0, (n_features, n_latent)) / np.sqrt(n_latent)
        regimes = rng.normal(0.0, 0.8, (n_regimes, n_features))
        regimes -= regimes.mean(axis=0)
        noise = rng.uniform(0.08, 0.15, n_features)
        spread = np.sqrt((mixing**2).sum(axis=1) + noise**2 + regimes.var(axis=0))
        return cls(base, unit, mixing, regimes, noise, spread * unit)

    @property
    def n_features(self) -> int:
        return len(self.base)


class SensorMachine:
    """One machine's sensor stream: regimes switch slowly, latent signals evolve smoothly (AR(1)), faults
    start at a rate that makes about `fault_rate` of events faulty, `drift` moves the operating point by
    that many channel sigmas per 1000 events along a fixed direction (for retraining demos).

    >>> m = SensorMachine("line-1/press-1", MachineType.create(4), seed=1, fault_rate=0.0)
    >>> [s.truth for s in m.take(3)]
    ['normal', 'normal', 'normal']
    """

    def __init__(
        self,
        source: str,
        machine_type: MachineType,
        seed: int = 0,
        fault_rate: float = 0.0,
        drift: float = 0.0,
        faults: Sequence[str] = SENSOR_FAULTS,
        stream: str = "live",
        switch_prob: float = 0.01,
        smoothness: float = 0.7,
    ):
        if not 0.0 <= fault_rate < 0.5:
            raise ValueError(f"fault_rate must be in [0, 0.5), got {fault_rate}")
        unknown = set(faults) - set(SENSOR_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; expected some of {SENSOR_FAULTS}")
        self.source, self.type, self.faults = source, machine_type, tuple(faults)
        self.fault_rate, self.drift, self.switch_prob, self.a = fault_rate, drift, switch_prob, smoothness
        F = machine_type.n_features
        own = _rng(seed, "machine", source)
        self.offset = own.normal(0.0, 0.3, F)  # this machine's own operating point, in channel units
        direction = own.normal(0.0, 1.0, F)
        self.drift_direction = direction / np.linalg.norm(direction)
        self.rng = _rng(seed, "dynamics", source, stream)
        self.z: np.ndarray = self.rng.normal(0.0, 1.0, int(machine_type.mixing.shape[1]))
        self.regime = int(self.rng.integers(len(machine_type.regimes)))
        self.count = 0
        self._fault: dict | None = None
        self._cooldown = _COOLDOWN
        # a fault episode starts with this probability on an eligible normal event
        self._p_start = fault_rate / max(_MEAN_FAULT_LENGTH * (1 - fault_rate) - fault_rate * _COOLDOWN, 1e-9)

    def normal_values(self) -> np.ndarray:
        """Advance the latent state and return the next fault-free reading (raw units, float64)."""
        t = self.type
        if self.rng.random() < self.switch_prob:
            self.regime = int(self.rng.integers(len(t.regimes)))
        self.z = self.a * self.z + np.sqrt(1 - self.a**2) * self.rng.normal(0.0, 1.0, self.z.shape)
        drift = self.drift * (self.count / 1000.0) * self.drift_direction * (t.scale / t.unit)
        channel = t.regimes[self.regime] + self.offset + t.mixing @ self.z + t.noise * self.rng.normal(size=len(t.base))
        self.count += 1
        return t.base + (channel + drift) * t.unit

    def next(self, ts: float) -> SensorSample:
        values = self.normal_values()
        truth = NORMAL
        if self._fault is None:
            self._cooldown -= 1
            if self.faults and self._cooldown <= 0 and self.rng.random() < self._p_start:
                self._fault = self._start_fault(values)
        if self._fault is not None:
            truth = self._fault["name"]
            values = self._apply_fault(values, self._fault)
            self._fault["left"] -= 1
            if self._fault["left"] <= 0:
                self._fault, self._cooldown = None, _COOLDOWN
        return SensorSample(self.source, ts, values.astype(np.float32), truth)

    def take(self, n: int, t0: float = 0.0, dt: float = 0.01) -> list[SensorSample]:
        return [self.next(t0 + i * dt) for i in range(n)]

    def _start_fault(self, values: np.ndarray) -> dict:
        name = str(self.rng.choice(self.faults))
        lo, hi = _FAULT_LENGTH[name]
        length = int(self.rng.integers(lo, hi + 1))
        F, scale = len(values), self.type.scale
        ch = int(self.rng.integers(F))
        sign = float(self.rng.choice([-1.0, 1.0]))
        fault = {"name": name, "left": length, "length": length, "channel": ch}
        if name == "spike":
            fault["delta"] = sign * self.rng.uniform(7.0, 10.0) * scale[ch]
        elif name == "stuck":
            mean = self.type.base[ch] + self.offset[ch] * self.type.unit[ch]
            fault["value"] = mean + sign * 6.0 * scale[ch]
        elif name == "shift":
            chans = self.rng.choice(F, size=min(F, int(self.rng.integers(3, 5))), replace=False)
            signs = np.where(np.arange(len(chans)) % 2 == 0, 1.0, -1.0) * sign
            fault["channels"] = chans
            fault["deltas"] = signs * self.rng.uniform(4.5, 6.0, len(chans)) * scale[chans]
        elif name == "wear":
            fault["sign"] = sign
        return fault

    def _apply_fault(self, values: np.ndarray, fault: dict) -> np.ndarray:
        values = values.copy()
        ch, name = fault["channel"], fault["name"]
        if name == "spike":
            values[ch] += fault["delta"]
        elif name == "stuck":
            values[ch] = fault["value"]
        elif name == "shift":
            values[fault["channels"]] += fault["deltas"]
        elif name == "wear":
            progress = 1.0 - fault["left"] / fault["length"]
            values[ch] += fault["sign"] * (5.0 + 7.0 * progress) * self.type.scale[ch]
        return values


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
        self.machine_type = MachineType.create(n_features, seed=seed)
        self.machines = [
            SensorMachine(src, self.machine_type, seed, fault_rate, drift, stream=stream)
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
