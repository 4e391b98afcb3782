"""Simulated vibration magnitude spectra of a rotating machine (motor -> gearbox -> load), pure numpy.

512 bins from 0 to 1,000 Hz (1.95 Hz per bin), one spectrum per row, magnitude in mm/s (linear).
Normal operation varies shaft speed (22-28 Hz) and load (0.3-1.0); each spectrum holds:

- shaft harmonics 1x..10x with decaying amplitudes that grow with load;
- gear mesh at 19 x shaft (GMF) and 2 x GMF, with small +-1x sidebands, amplitude ~ load;
- the bearing's defect frequencies at a healthy, barely visible level: BPFO 3.58x, BPFI 5.42x, BSF 2.37x;
- two structural resonance bands (fixed frequency, broad), excited in proportion to load;
- a noise floor falling as 1/f plus white, and multiplicative estimation noise on every bin
  (an averaged periodogram: Gamma with 8 averages).

Peaks are Gaussian lines two bins wide (window leakage). Faults add or grow specific components:

  imbalance      1x grows 3x
  misalignment   2x and 3x grow 4x
  looseness      harmonics up to 10x and half-harmonics (0.5x, 1.5x, ...) appear
  outer_race     BPFO and its harmonics appear (x15)
  inner_race     BPFI and harmonics with +-1x sidebands (x12)
  ball           BSF and 2 x BSF with +-FTF sidebands (x12)
  gear_wear      GMF sidebands at +-1x, +-2x, +-3x grow (x8)
  resonance      a resonance band is excited broadband (x4)

>>> X, y = spectra(10, seed=0, fault="outer_race")
>>> X.shape, bool((X > 0).all())
((10, 512), True)
"""

from __future__ import annotations

import numpy as np

N_BINS, F_MAX = 512, 1000.0
FREQS = np.linspace(0.0, F_MAX, N_BINS, endpoint=False) + F_MAX / N_BINS / 2
FAULTS = ("imbalance", "misalignment", "looseness", "outer_race", "inner_race", "ball", "gear_wear", "resonance")
BPFO, BPFI, BSF, FTF, GEAR_TEETH = 3.58, 5.42, 2.37, 0.40, 19
RESONANCES = ((310.0, 25.0), (720.0, 40.0))  # (centre Hz, half-width Hz)
BAND_NAMES = ("1x", "2x", "3x", "harmonics", "bearing", "gear mesh", "resonance", "floor")


def _line(f0: np.ndarray, amp: np.ndarray, width: float = 2 * F_MAX / N_BINS) -> np.ndarray:
    """Gaussian lines at f0 [n] with amplitude amp [n] -> [n, bins]."""
    return amp[:, None] * np.exp(-0.5 * ((FREQS[None, :] - f0[:, None]) / width) ** 2)


def feature_names() -> list[str]:
    """Bin names with their frequency, e.g. "bin 37 (73 Hz)"."""
    return [f"bin {i} ({f:.0f} Hz)" for i, f in enumerate(FREQS)]


def spectra(n: int, seed: int = 0, fault: str | None = None, severity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [n, 512] linear magnitudes, y [n] 1 where faulty)."""
    rng = np.random.default_rng(seed)
    fr = rng.uniform(22.0, 28.0, n)  # shaft speed, Hz
    load = rng.uniform(0.3, 1.0, n)
    X = np.zeros((n, N_BINS))
    for h in range(1, 11):
        amp = (2.0 / h**1.2) * (0.6 + 0.6 * load) * rng.lognormal(0, 0.15, n)
        if fault == "imbalance" and h == 1:
            amp *= 1 + 2.0 * severity
        if fault == "misalignment" and h in (2, 3):
            amp *= 1 + 3.0 * severity
        if fault == "looseness" and h >= 4:
            amp *= 1 + 4.0 * severity
        X += _line(h * fr, amp)
    if fault == "looseness":
        for h in np.arange(0.5, 6.0, 1.0):
            X += _line(h * fr, 0.25 * severity * rng.lognormal(0, 0.2, n))
    gmf = GEAR_TEETH * fr
    for k, scale in ((1, 0.8), (2, 0.3)):
        X += _line(k * gmf, scale * load * rng.lognormal(0, 0.15, n))
        for s in (1, 2, 3):
            side = 0.06 / s * load * (1 + 7.0 * severity * (fault == "gear_wear"))
            X += _line(k * gmf + s * fr, side * rng.lognormal(0, 0.2, n))
            X += _line(k * gmf - s * fr, side * rng.lognormal(0, 0.2, n))
    for ratio, name in ((BPFO, "outer_race"), (BPFI, "inner_race"), (BSF, "ball")):
        grow = 1 + (11.0 + 4.0 * (name == "outer_race")) * severity * (fault == name)
        for h in (1, 2, 3):
            amp = 0.015 / h * grow * rng.lognormal(0, 0.2, n)
            X += _line(h * ratio * fr, amp)
            if fault == name and name == "inner_race":
                X += _line(h * ratio * fr + fr, 0.4 * amp) + _line(h * ratio * fr - fr, 0.4 * amp)
            if fault == name and name == "ball":
                X += _line(h * ratio * fr + FTF * fr, 0.4 * amp) + _line(h * ratio * fr - FTF * fr, 0.4 * amp)
    for i, (fc, hw) in enumerate(RESONANCES):
        level = 0.05 * load * (1 + 3.0 * severity * (fault == "resonance" and i == 0))
        X += level[:, None] * np.exp(-0.5 * ((FREQS[None, :] - fc) / hw) ** 2)
    X += 0.02 * (30.0 / np.maximum(FREQS, 5.0))[None, :] + 0.004
    X *= rng.gamma(8.0, 1 / 8.0, X.shape)  # averaged-periodogram estimation noise
    y = np.full(n, 0 if fault is None else 1)
    return X.astype(np.float32), y
