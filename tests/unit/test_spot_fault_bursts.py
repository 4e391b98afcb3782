"""Recurring fault bursts must not lift SPOT's alert level above the faults (they are faults, not the tail)."""

from __future__ import annotations

import numpy as np

from stream_app.judging import thresholds as T
from stream_app.settings import ThresholdSettings


def test_recurring_fault_bursts_keep_the_alert_level_below_the_faults_and_keep_them_flagged() -> None:
    cfg = ThresholdSettings(risk=1e-3)
    gen = np.random.default_rng(0)
    state = T.initial_state(cfg, gen.exponential(size=800))
    flagged, levels = [], []
    for block in range(40):  # a 30-event burst at 30-60 every 1,024 events: 3% of the line in faults
        x = gen.exponential(size=256)
        burst = block % 4 == 1
        if burst:
            x[100:130] = 30 + 30 * gen.random(30)
        thr, anomalous, state = T.judge(cfg, state, x)
        levels.append(float(thr[-1]))
        if burst:
            flagged.append(anomalous[100:130].mean())
    assert max(levels) < 30, levels  # (before the cap: ~400 after ten bursts, every later fault missed)
    assert min(flagged) == 1.0
