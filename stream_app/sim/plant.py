"""A simulated centrifugal pump / motor line with labelled sensor and process faults (pure numpy).

One implementation for the demo's live lines (`sim.simulator.SensorMachine` streams it) and the
sensor-quality benchmark (`benchmarks/plant_sim.py` re-exports it). One row per time step. A few latent
operating variables drive every sensor through simple physics, so the sensors are correlated the way
plant data is:

- speed set-point (regimes 1480 / 1320 / 1180 rpm, switching after a geometric number of rows, with a
  first-order ramp), valve command (AR(1) around a regime-dependent opening), ambient temperature
  (daily sine + AR noise), tank level (slow AR, sets the suction pressure), grid voltage (AR).
- pump: head H = H0 n^2 - kp Q^2 (affinity laws) against the system curve hs + Q^2 / (kv a^2), solved for
  the flow Q at relative speed n and valve opening a; suction pressure = level - ks Q^2; discharge =
  suction + H; hydraulic power Q H / efficiency(Q / n) -> electrical power / motor efficiency; current
  = P / (sqrt(3) V pf).
- vibration RMS grows with n^2 and with distance from the best-efficiency flow; a bearing-band level
  with n^1.5; motor, bearing and fluid temperatures follow their heat sources with first-order lags.
- every sensor adds white noise; flow and discharge pressure sensors also drift slowly (a random walk).

Fault families (`FAMILIES`), each applied to an episode of rows; `FAMILY_SENSORS` names the sensors each
one changes directly (process faults also reach the temperatures through their lags):
  offset       step on one sensor (discharge pressure)
  drift        ramp on one sensor (motor temperature) growing over the episode
  stuck        flat-line: the flow sensor repeats its value from the episode start
  spikes       bursts of large single-sample spikes on motor current (only spiked rows are labelled)
  bearing      bearing wear: bearing-band vibration, RMS vibration and bearing temperature grow
  cavitation   suction pressure drops; flow falls and becomes erratic; discharge pressure fluctuates
  corr_break   the current sensor decouples from the process (reads its value from 600 rows earlier)
  valve        the valve closes (obstruction) while its position sensor still reads the command

`Plant` keeps the process state between calls, so a stream can be produced block by block; `simulate`
is one `Plant` run in a single block.

>>> X, y = simulate(300, seed=0, episodes=[Episode("offset", 100, 50)])
>>> X.shape, int((y == FAMILIES.index("offset") + 1).sum())
((300, 13), 50)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

SENSORS = (
    "speed_rpm",
    "flow_m3h",
    "pressure_in_bar",
    "pressure_out_bar",
    "motor_current_a",
    "voltage_v",
    "power_kw",
    "vib_rms_mm_s",
    "vib_band_g",
    "motor_temp_c",
    "bearing_temp_c",
    "fluid_temp_c",
    "valve_pos_pct",
)
FAMILIES = ("offset", "drift", "stuck", "spikes", "bearing", "cavitation", "corr_break", "valve")
S = {name: i for i, name in enumerate(SENSORS)}
# White-noise standard deviation of each sensor, in its units (fault sizes are multiples of these).
NOISE = np.array([2.0, 1.5, 0.01, 0.02, 0.4, 1.0, 0.25, 0.04, 0.003, 0.3, 0.3, 0.2, 0.3])
FAMILY_SENSORS = {
    "offset": ("pressure_out_bar",),
    "drift": ("motor_temp_c",),
    "stuck": ("flow_m3h",),
    "spikes": ("motor_current_a",),
    "bearing": ("vib_rms_mm_s", "vib_band_g", "bearing_temp_c"),
    "cavitation": ("flow_m3h", "pressure_in_bar", "pressure_out_bar", "vib_rms_mm_s", "vib_band_g"),
    "corr_break": ("motor_current_a",),
    "valve": ("flow_m3h", "pressure_in_bar", "pressure_out_bar", "power_kw", "motor_current_a"),
}
SENSOR_FAMILIES = ("offset", "drift", "stuck", "spikes", "corr_break")  # one transmitter; the process runs on
# Which sensors a narrower vector keeps, most telling first: every family still changes one of the first two.
PRIORITY = ("flow_m3h", "pressure_out_bar", "motor_current_a", "valve_pos_pct", "motor_temp_c", "vib_rms_mm_s",
            "bearing_temp_c", "pressure_in_bar", "speed_rpm", "power_kw", "vib_band_g", "fluid_temp_c",
            "voltage_v")  # fmt: skip
SPIKE_SHARE = 0.2  # share of a spikes episode's rows that hold a spike
CORR_BREAK_LAG = 600  # rows back that a decoupled current sensor reads
_SPEEDS = np.array([1480.0, 1320.0, 1180.0])
_OPENINGS = np.array([72.0, 62.0, 80.0])


@dataclass(frozen=True)
class Pump:
    """Pump and system constants (bar, m3/h); the defaults are the reference machine."""

    h0: float = 6.0  # shut-off head at nominal speed, bar
    hs: float = 1.0  # static head of the system, bar
    kp: float = 6e-5  # pump head loss, bar/(m3/h)^2
    kv: float = 12600.0  # valve conductance, (m3/h)^2/bar
    ks: float = 1e-5  # suction line loss, bar/(m3/h)^2
    q_bep: float = 150.0  # best-efficiency flow at nominal speed, m3/h
    level: float = 1.2  # mean tank level, bar at the suction

    def varied(self, rng: np.random.Generator, spread: float = 0.02) -> Pump:
        """A sister machine: every constant off by a relative `spread` (standard deviation)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Pump(**{k: v * (1.0 + spread * float(rng.standard_normal())) for k, v in fields.items()})


@dataclass(frozen=True)
class Episode:
    """`family` on rows [start, start + length); `size` multiplies the height of an offset, drift or spikes
    (1: the benchmark's size)."""

    family: str
    start: int
    length: int
    size: float = 1.0

    @property
    def stop(self) -> int:
        return self.start + self.length


def schedule(n_rows: int, start: int, rng: np.random.Generator, per_family: int = 2, length: int = 120,
             gap: int = 200) -> list[Episode]:  # fmt: skip
    """Episodes of every family in a shuffled order from `start`, `gap` normal rows between them."""
    order = [f for f in FAMILIES for _ in range(per_family)]
    rng.shuffle(order)
    out, t = [], start + gap
    for family in order:
        if t + length > n_rows:
            break
        out.append(Episode(family, t, length))
        t += length + gap
    return out


def channel_sensors(n_features: int) -> np.ndarray:
    """The sensor (index into SENSORS) each of `n_features` channels reads, in SENSORS order: all 13 for 13,
    the first `n_features` of PRIORITY for fewer, and redundant transmitters (channel i reads sensor i mod 13,
    its own noise and drift) for more."""
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    if n_features >= len(SENSORS):
        return np.arange(n_features) % len(SENSORS)
    return np.array(sorted(S[name] for name in PRIORITY[:n_features]))


def families_for(channels: np.ndarray) -> tuple[str, ...]:
    """The families that change at least one of the sensors these channels read."""
    read = {SENSORS[int(c)] for c in channels}
    return tuple(f for f in FAMILIES if read & set(FAMILY_SENSORS[f]))


def _ar1(n: int, phi: float, sd: float, rng: np.random.Generator, acc: float = 0.0) -> np.ndarray:
    e = rng.normal(0.0, sd, n)
    x = np.empty(n)
    for t in range(n):
        acc = phi * acc + e[t]
        x[t] = acc
    return x


def _lag(target: np.ndarray, tau: float, x0: float) -> np.ndarray:
    """First-order lag: x_t = x_{t-1} + (target_t - x_{t-1}) / tau."""
    out = np.empty_like(target)
    x = x0
    for t in range(len(target)):
        x += (target[t] - x) / tau
        out[t] = x
    return out


def _overlap(ep: Episode, t0: int, n: int) -> tuple[slice, np.ndarray] | None:
    """The rows of block [t0, t0 + n) inside `ep` (block coordinates) and the episode's progress 0..1 on them."""
    a, b = max(ep.start, t0), min(ep.stop, t0 + n)
    if a >= b:
        return None
    return slice(a - t0, b - t0), np.linspace(0, 1, ep.length)[a - ep.start : b - ep.start]


class Plant:
    """One pump line's process and sensors, produced block after block with its state carried over.

    `channels` picks the sensor each output column reads (`channel_sensors`); a sensor fault hits the first
    channel that reads its sensor. Random draws come from `rng` in a fixed order, so one block of n rows is
    exactly `simulate(n)`.

    >>> plant = Plant(np.random.default_rng(0))
    >>> X1, _ = plant.run(100)
    >>> X2, y2 = plant.run(100, [Episode("stuck", 150, 20)])
    >>> X2.shape, int((y2 > 0).sum()), bool(np.ptp(X2[50:70, S["flow_m3h"]]) == 0)
    ((100, 13), 20, True)
    """

    def __init__(
        self, rng: np.random.Generator, pump: Pump | None = None, channels: Sequence[int] | np.ndarray | None = None
    ):
        self.rng, self.pump = rng, pump or Pump()
        self.channels = np.arange(len(SENSORS)) if channels is None else np.asarray(channels, int)
        self.t = 0  # rows produced so far
        self._regime, self._left, self._next = 0, 0, -1
        self._ar = {"valve": 0.0, "ambient": 0.0, "level": 0.0, "voltage": 0.0}
        self._phase: float | None = None
        self._lags: dict[str, float] = {}
        self._walk = np.zeros(len(self.channels))
        self._stuck: dict[Episode, float] = {}
        self._current_history = np.empty(0)  # the current channel's last CORR_BREAK_LAG readings

    def _regimes(self, n: int) -> np.ndarray:
        regime, t = np.empty(n, int), 0
        while t < n:
            if self._left == 0:
                if self._next >= 0:
                    self._regime = self._next
                self._left = int(self.rng.geometric(1 / 150)) + 30
                self._next = int(self.rng.choice([k for k in range(3) if k != self._regime]))
            take = min(self._left, n - t)
            regime[t : t + take] = self._regime
            t, self._left = t + take, self._left - take
        return regime

    def _ar1(self, name: str, n: int, phi: float, sd: float) -> np.ndarray:
        x = _ar1(n, phi, sd, self.rng, self._ar[name])
        if n:
            self._ar[name] = float(x[-1])
        return x

    def _lag(self, name: str, target: np.ndarray, tau: float) -> np.ndarray:
        out = _lag(target, tau, self._lags.get(name, float(target[0])))
        self._lags[name] = float(out[-1])
        return out

    def run(self, n: int, episodes: Sequence[Episode] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` rows: (X float64 [n, channels] in raw units, labels int [n]: 0 normal,
        k = FAMILIES[k - 1]). `episodes` are in absolute rows; those outside this block are ignored."""
        rng, p, t0 = self.rng, self.pump, self.t
        if n <= 0:
            return np.empty((0, len(self.channels))), np.zeros(0, int)
        # --- latent operating variables
        regime = self._regimes(n)
        speed = self._lag("speed", _SPEEDS[regime], 5.0)
        valve_cmd = np.clip(_OPENINGS[regime] + self._ar1("valve", n, 0.98, 1.2), 20, 100)
        if self._phase is None:
            self._phase = float(rng.uniform(0, 2 * np.pi))
        tt = np.arange(t0, t0 + n)
        ambient = 20 + 6 * np.sin(2 * np.pi * tt / 1440 + self._phase) + self._ar1("ambient", n, 0.995, 0.05)
        level = p.level + self._ar1("level", n, 0.995, 0.004)
        voltage = 400 + self._ar1("voltage", n, 0.9, 1.0)

        # --- process faults (modify the physics, not the sensors)
        labels = np.zeros(n, int)
        valve_factor, suction_drop, wear, cav = np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n)
        for ep in episodes:
            if (hit := _overlap(ep, t0, n)) is None:
                continue
            sl, ramp = hit
            if ep.family != "spikes":
                labels[sl] = FAMILIES.index(ep.family) + 1
            if ep.family == "valve":
                valve_factor[sl] = 1 - 0.35 * np.minimum(1, 3 * ramp)
            elif ep.family == "cavitation":
                suction_drop[sl] = 0.35
                cav[sl] = 1.0
            elif ep.family == "bearing":
                wear[sl] = 0.3 + 0.7 * ramp

        nrel = speed / 1480.0
        a = np.clip(valve_cmd * valve_factor / 100.0, 0.05, 1.0)
        Q = np.sqrt(np.maximum(p.h0 * nrel**2 - p.hs, 0.01) / (p.kp + 1 / (p.kv * a**2)))
        Q = Q * (1 - 0.08 * cav * (1 + 0.5 * rng.standard_normal(n)))  # cavitation: flow falls, erratic
        H = p.h0 * nrel**2 - p.kp * Q**2
        p_in = level - p.ks * Q**2 - suction_drop
        p_out = p_in + H + cav * 0.15 * rng.standard_normal(n)
        eff = np.clip(0.78 - 0.9 * (Q / (p.q_bep * nrel) - 1) ** 2, 0.3, 0.8)
        p_hyd = Q / 3600 * H * 1e5 / 1000  # kW
        power = p_hyd / eff / 0.93
        current = power * 1000 / (np.sqrt(3) * voltage * 0.85)
        vib_rms = 1.2 * nrel**2 + 0.8 * np.abs(Q / (p.q_bep * nrel) - 1) + 1.2 * wear + 0.5 * cav
        vib_band = 0.05 * nrel**1.5 * (1 + 2.5 * wear + 1.0 * cav)
        motor_temp = self._lag("motor_temp", ambient + 0.018 * current**2, 60.0)
        bearing_temp = self._lag("bearing_temp", ambient + 22 * nrel**2 + 6 * wear, 40.0)
        fluid_temp = self._lag("fluid_temp", ambient + 6 + 0.05 * power, 30.0)

        true = np.stack(
            [speed, Q, p_in, p_out, current, voltage, power, vib_rms, vib_band, motor_temp, bearing_temp, fluid_temp,
             valve_cmd], axis=1,
        )  # fmt: skip
        ch = self.channels
        X = true[:, ch] + rng.normal(size=(n, len(ch))) * NOISE[ch]
        band = ch == S["vib_band_g"]
        X[:, band] = np.abs(X[:, band])
        # normal sensor drift: slow random walks on the flow and discharge pressure sensors
        for j in np.flatnonzero((ch == S["flow_m3h"]) | (ch == S["pressure_out_bar"])):
            step = 0.01 if ch[j] == S["flow_m3h"] else 0.0002
            walk = self._walk[j] + np.cumsum(rng.normal(0, step, n))
            X[:, j] += walk
            self._walk[j] = walk[-1]

        self._sensor_faults(X, labels, episodes)
        self.t += n
        return X, labels

    def _column(self, sensor: str) -> int | None:
        """The first channel that reads `sensor` (the transmitter a sensor fault hits), None if none does."""
        hits = np.flatnonzero(self.channels == S[sensor])
        return int(hits[0]) if hits.size else None

    def _sensor_faults(self, X: np.ndarray, labels: np.ndarray, episodes: Sequence[Episode]) -> None:
        """Modify the readings of this block (rows t .. t + len(X)) in place."""
        rng, t0, n = self.rng, self.t, len(X)
        current = self._column("motor_current_a")
        for ep in episodes:
            if (hit := _overlap(ep, t0, n)) is None:
                continue
            sl, ramp = hit
            if ep.family not in SENSOR_FAMILIES or (col := self._column(FAMILY_SENSORS[ep.family][0])) is None:
                continue
            m = sl.stop - sl.start
            if ep.family == "offset":
                X[sl, col] += 8 * NOISE[S["pressure_out_bar"]] * ep.size
            elif ep.family == "drift":
                X[sl, col] += 15 * NOISE[S["motor_temp_c"]] * ramp * ep.size
            elif ep.family == "stuck":
                X[sl, col] = self._stuck.setdefault(ep, float(X[sl.start, col]))
            elif ep.family == "spikes":
                spiked = rng.random(m) < SPIKE_SHARE
                sign = rng.choice([-1.0, 1.0], m)
                X[sl, col] += spiked * sign * rng.uniform(6, 12, m) * NOISE[S["motor_current_a"]] * ep.size
                labels[np.arange(sl.start, sl.stop)[spiked]] = FAMILIES.index("spikes") + 1
            elif ep.family == "corr_break":
                past = np.concatenate([self._current_history, X[:, col]])
                rows = np.maximum(np.arange(t0 + sl.start, t0 + sl.stop) - CORR_BREAK_LAG, 0)
                X[sl, col] = past[rows - (t0 - len(self._current_history))]
        if current is not None:
            self._current_history = np.concatenate([self._current_history, X[:, current]])[-CORR_BREAK_LAG:]
        for ep in [ep for ep in self._stuck if ep.stop <= t0 + n]:
            del self._stuck[ep]


def simulate(n_rows: int, seed: int = 0, episodes: Sequence[Episode] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(X float64 [n_rows, 13] in raw units, labels int [n_rows]: 0 normal, k = FAMILIES[k - 1])."""
    return Plant(np.random.default_rng(seed)).run(n_rows, episodes)


@cache
def normal_spread(seed: int = 0, n_rows: int = 20_000) -> np.ndarray:
    """Each sensor's standard deviation over a long fault-free run of the reference pump (raw units)."""
    X, _ = simulate(n_rows, seed)
    return X.std(axis=0)
