"""Simulated centrifugal pump / motor line with labelled sensor and process faults (pure numpy).

One row per minute. A few latent operating variables drive every sensor through simple physics, so the
sensors are correlated the way plant data is:

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

Fault families (`FAMILIES`), each applied to an episode of rows:
  offset       step on one sensor (discharge pressure)
  drift        ramp on one sensor (motor temperature) growing over the episode
  stuck        flat-line: the flow sensor repeats its value from the episode start
  spikes       bursts of large single-sample spikes on motor current (only spiked rows are labelled)
  bearing      bearing wear: bearing-band vibration, RMS vibration and bearing temperature grow
  cavitation   suction pressure drops; flow falls and becomes erratic; discharge pressure fluctuates
  corr_break   the current sensor decouples from the process (reads its value from 600 rows earlier)
  valve        the valve closes (obstruction) while its position sensor still reads the command

>>> X, y = simulate(300, seed=0, episodes=[Episode("offset", 100, 50)])
>>> X.shape, int((y == FAMILIES.index("offset") + 1).sum())
((300, 13), 50)
"""

from __future__ import annotations

from dataclasses import dataclass

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

H0, HS, KP, KV, KS = 6.0, 1.0, 6e-5, 12600.0, 1e-5  # bar, bar, bar/(m3/h)^2, (m3/h)^2/bar, bar/(m3/h)^2
Q_BEP = 150.0  # best-efficiency flow at nominal speed, m3/h


@dataclass(frozen=True)
class Episode:
    family: str
    start: int
    length: int


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


def _ar1(n: int, phi: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(0.0, sd, n)
    x = np.empty(n)
    acc = 0.0
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


def simulate(n_rows: int, seed: int = 0, episodes: list[Episode] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(X float64 [n_rows, 13] in raw units, labels int [n_rows]: 0 normal, k = FAMILIES[k - 1])."""
    rng = np.random.default_rng(seed)
    n = n_rows
    # --- latent operating variables
    speeds = np.array([1480.0, 1320.0, 1180.0])
    openings = np.array([72.0, 62.0, 80.0])
    regime = np.empty(n, int)
    r, t = 0, 0
    while t < n:
        dur = int(rng.geometric(1 / 150)) + 30
        regime[t : t + dur] = r
        t += dur
        r = int(rng.choice([k for k in range(3) if k != r]))
    speed = _lag(speeds[regime], 5.0, speeds[regime[0]])
    valve_cmd = np.clip(openings[regime] + _ar1(n, 0.98, 1.2, rng), 20, 100)
    tt = np.arange(n)
    ambient = 20 + 6 * np.sin(2 * np.pi * tt / 1440 + rng.uniform(0, 2 * np.pi)) + _ar1(n, 0.995, 0.05, rng)
    level = 1.2 + _ar1(n, 0.995, 0.004, rng)
    voltage = 400 + _ar1(n, 0.9, 1.0, rng)

    # --- process faults (modify the physics, not the sensors)
    labels = np.zeros(n, int)
    valve_factor, suction_drop, wear, cav = np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for ep in episodes:
        sl = slice(ep.start, min(n, ep.start + ep.length))
        ramp = np.linspace(0, 1, sl.stop - sl.start)
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
    Q = np.sqrt(np.maximum(H0 * nrel**2 - HS, 0.01) / (KP + 1 / (KV * a**2)))
    Q = Q * (1 - 0.08 * cav * (1 + 0.5 * rng.standard_normal(n)))  # cavitation: flow falls, erratic
    H = H0 * nrel**2 - KP * Q**2
    p_in = level - KS * Q**2 - suction_drop
    p_out = p_in + H + cav * 0.15 * rng.standard_normal(n)
    eff = np.clip(0.78 - 0.9 * (Q / (Q_BEP * nrel) - 1) ** 2, 0.3, 0.8)
    p_hyd = Q / 3600 * H * 1e5 / 1000  # kW
    power = p_hyd / eff / 0.93
    current = power * 1000 / (np.sqrt(3) * voltage * 0.85)
    vib_rms = 1.2 * nrel**2 + 0.8 * np.abs(Q / (Q_BEP * nrel) - 1) + 1.2 * wear + 0.5 * cav
    vib_band = 0.05 * nrel**1.5 * (1 + 2.5 * wear + 1.0 * cav)
    motor_temp = _lag(ambient + 0.018 * current**2, 60.0, ambient[0] + 0.018 * current[0] ** 2)
    bearing_temp = _lag(ambient + 22 * nrel**2 + 6 * wear, 40.0, ambient[0] + 22 * nrel[0] ** 2)
    fluid_temp = _lag(ambient + 6 + 0.05 * power, 30.0, ambient[0] + 6 + 0.05 * power[0])

    X = np.stack(
        [speed, Q, p_in, p_out, current, voltage, power, vib_rms, vib_band, motor_temp, bearing_temp, fluid_temp,
         valve_cmd], axis=1,
    )  # fmt: skip
    X = X + rng.normal(size=X.shape) * NOISE
    X[:, S["vib_band_g"]] = np.abs(X[:, S["vib_band_g"]])
    # normal sensor drift: slow random walks on the flow and discharge pressure sensors
    X[:, S["flow_m3h"]] += np.cumsum(rng.normal(0, 0.01, n))
    X[:, S["pressure_out_bar"]] += np.cumsum(rng.normal(0, 0.0002, n))

    # --- sensor faults (modify the readings)
    for ep in episodes:
        sl = slice(ep.start, min(n, ep.start + ep.length))
        m = sl.stop - sl.start
        ramp = np.linspace(0, 1, m)
        if ep.family == "offset":
            X[sl, S["pressure_out_bar"]] += 8 * NOISE[S["pressure_out_bar"]]
        elif ep.family == "drift":
            X[sl, S["motor_temp_c"]] += 15 * NOISE[S["motor_temp_c"]] * ramp
        elif ep.family == "stuck":
            X[sl, S["flow_m3h"]] = X[sl.start, S["flow_m3h"]]
        elif ep.family == "spikes":
            hit = rng.random(m) < 0.2
            sign = rng.choice([-1.0, 1.0], m)
            X[sl, S["motor_current_a"]] += hit * sign * rng.uniform(6, 12, m) * NOISE[S["motor_current_a"]]
            labels[np.arange(sl.start, sl.stop)[hit]] = FAMILIES.index("spikes") + 1
        elif ep.family == "corr_break":
            src = np.arange(sl.start, sl.stop) - 600
            X[sl, S["motor_current_a"]] = X[np.maximum(src, 0), S["motor_current_a"]]
    return X, labels
