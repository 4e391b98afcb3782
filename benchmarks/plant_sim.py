"""The benchmark's name for the simulated pump / motor line: the model lives in `stream_app/sim/plant.py`,
shared with the demo's live lines, so the benchmark and the demo see one process.

>>> X, y = simulate(300, seed=0, episodes=[Episode("offset", 100, 50)])
>>> X.shape, int((y == FAMILIES.index("offset") + 1).sum())
((300, 13), 50)
"""

from __future__ import annotations

from stream_app.sim.plant import FAMILIES, FAMILY_SENSORS, NOISE, SENSORS, Episode, Plant, schedule, simulate

__all__ = ["FAMILIES", "FAMILY_SENSORS", "NOISE", "SENSORS", "Episode", "Plant", "schedule", "simulate"]
