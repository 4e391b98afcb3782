"""Rolling alert thresholds: one small class per rule, pure functions over score arrays, no I/O.

Three rules, picked by `ThresholdSettings.mode` through `RULES` (mode name -> class):

- `Spot` (``spot``, default): streaming peaks-over-threshold (Siffer et al., KDD 2017). The initial
  threshold t is the `init_quantile` of the calibration scores; excesses over t ("peaks") are fitted with a
  Generalized Pareto distribution and the alert threshold is z_q, the level exceeded with probability `risk`.
- `RollingQuantile` (``quantile``): the (1 - risk) quantile of the last `window` normal scores,
  extrapolated with an exponential tail from two empirical quantiles well inside the window.
- `Ewma` (``ewma``): exponentially weighted mean + `ewma_k` * std of normal scores (not calibrated to `risk`).

Every rule speaks the same verbs on its own small frozen state: `initial(calibration_scores)`,
`threshold(state)`, `judge(state, scores)` and `dump(state)` / `load(dict)`. The module-level functions
(`initial_state`, `current_threshold`, `judge`, `dumps`, `loads`) pick the rule from the settings or the
state's `mode` and are what the store calls.

`judge` scores a batch in order; only scores judged normal update the state, so an anomaly never drags the
threshold towards itself. That rule truncates what the state sees at the alert level, which is why SPOT
fits a truncated likelihood and the quantile rule extrapolates from quantiles below it: a state fitted
naively to truncated data ratchets the threshold down (measured on 200k exponential scores at risk 1e-3: a
false-alarm rate of 3.8e-3 for naive SPOT, 8e-2 for a naive rolling (1 - risk) quantile; 1.6e-3 and ~1e-3
with the corrections).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import orjson

from stream_app.judging.gpd import fit_gpd, spot_threshold  # re-exported: the tail math lives in gpd.py
from stream_app.judging.stored import b64, frozen, json_object, unb64
from stream_app.settings import ThresholdSettings

REFIT_FRACTION_INV = 20  # SPOT refits the tail once 1/20 of the kept peaks are new...
REFIT_MIN_NEW = 5  # ...and at least 5 (a refit costs ~5-10 ms; one peak among dozens barely moves it)
QUANTILE_SPAN = 5.0  # the quantile rule's lower anchor sits at 5x the upper anchor's tail probability

Mode = Literal["spot", "quantile", "ewma"]
Judged = tuple[np.ndarray, np.ndarray, Any]  # (threshold per score, anomalous flags, new state)


# ---------------------------------------------------------------- states


class _State:
    """Equality by serialised bytes (states hold numpy arrays, which dataclass equality cannot compare)."""

    mode: Mode

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and dumps(self) == dumps(other)  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SpotState(_State):
    """SPOT state: initial threshold t, GPD fit (xi, sigma) of the kept peaks, and the observation count.

    Only the `window` most recent peaks are kept (float32 excesses, oldest first), so the state stays small
    (8 KB at 2000 peaks) and the tail fit follows drift. When the oldest peak is dropped, `n` is rescaled
    by window/(window + 1) so N_t/n, the estimated rate of exceeding t, is unchanged: the rate then has a
    memory of roughly window/rate observations, like the peaks. `count` counts the normal scores absorbed
    since calibration (exact, for tests and metrics).

    Refitting cheaply: the tail is refitted when `unfit`, the peaks added since the last fit, reaches 5% of
    the kept peaks and at least 5 (the fit at startup rests on calibration peaks). z_q always uses the
    current n and N_t; only (xi, sigma) wait, and one new peak in hundreds does not move them measurably.

    `limits` make the refit truncation-aware (see `fit_gpd`): without them the threshold ratchets down.
    """

    t: float
    xi: float
    sigma: float
    n: float
    peaks: np.ndarray
    limits: np.ndarray  # per peak, the alert level minus t when it was admitted (inf: calibration)
    count: int = 0
    unfit: int = 0
    mode: Mode = "spot"


@dataclass(frozen=True, eq=False)
class QuantileState(_State):
    """The last `window` normal scores (float32, oldest first)."""

    window: np.ndarray
    count: int = 0
    mode: Mode = "quantile"


@dataclass(frozen=True, eq=False)
class EwmaState(_State):
    """Exponentially weighted mean and variance of normal scores."""

    mean: float
    var: float
    count: int = 0
    mode: Mode = "ewma"


ThresholdState = SpotState | QuantileState | EwmaState


# ---------------------------------------------------------------- rules


class ThresholdRule:
    """The verbs every rule speaks; a rule holds only its settings, its state is passed in and returned."""

    mode: ClassVar[Mode]
    state_type: ClassVar[type]

    def __init__(self, cfg: ThresholdSettings) -> None:
        self.cfg = cfg

    def initial(self, cal: np.ndarray) -> Any:
        """The state a source starts from, fitted on finite calibration (normal) scores."""
        raise NotImplementedError

    def threshold(self, state: Any) -> float:
        """The alert threshold the next score would be judged against."""
        raise NotImplementedError

    def judge(self, state: Any, x: np.ndarray) -> Judged:
        """(threshold each score met, anomalous flags, new state) for float64 scores `x` in order."""
        raise NotImplementedError

    @staticmethod
    def dump(state: Any) -> dict[str, Any]:
        """The state's JSON-able fields (without `mode`)."""
        raise NotImplementedError

    @staticmethod
    def load(d: dict[str, Any]) -> Any:
        """Inverse of `dump`."""
        raise NotImplementedError


def _cap_peaks(peaks: np.ndarray, limits: np.ndarray, n: float, window: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Keep the `window` newest peaks, rescaling n so the exceedance rate N_t/n is preserved."""
    if peaks.size <= window:
        return peaks, limits, n
    return peaks[-window:], limits[-window:], n * window / peaks.size


class Spot(ThresholdRule):
    """Streaming peaks-over-threshold: z_q from a GPD fitted to the excesses over t (see `SpotState`).

    >>> rule = Spot(ThresholdSettings(risk=1e-3))
    >>> state = rule.initial(np.random.default_rng(0).exponential(size=2000))
    >>> state.peaks.size, round(state.t, 2), round(rule.threshold(state), 1)
    (40, 4.01, 7.3)
    >>> thr, anomalous, state = rule.judge(state, np.array([1.0, 5.0, 50.0]))
    >>> anomalous.tolist(), state.count
    ([False, False, True], 2)
    """

    mode = "spot"
    state_type = SpotState

    def initial(self, cal: np.ndarray) -> SpotState:
        t = float(np.quantile(cal, self.cfg.init_quantile))
        peaks = (cal[cal > t] - t).astype(np.float32)
        inf = np.full(peaks.size, np.inf, np.float32)
        peaks, limits, n = _cap_peaks(peaks, inf, float(cal.size), self.cfg.window)
        xi, sigma = fit_gpd(peaks) if peaks.size else (0.0, 0.0)
        return SpotState(t=t, xi=xi, sigma=sigma, n=n, peaks=frozen(peaks), limits=frozen(limits))

    def threshold(self, state: SpotState) -> float:
        return float(spot_threshold(state.t, state.xi, state.sigma, self.cfg.risk, state.n, state.peaks.size))

    def judge(self, st: SpotState, x: np.ndarray) -> Judged:
        thr, anomalous = np.empty(x.size), np.zeros(x.size, dtype=bool)
        t, xi, sigma, n, count, unfit = st.t, st.xi, st.sigma, st.n, st.count, st.unfit
        peaks, limits = st.peaks, st.limits
        q = self.cfg.risk
        i = 0
        # Between two scores above t, every score is normal and only increments n: do those runs in bulk.
        for j in np.flatnonzero(~(x <= t) | ~np.isfinite(x)):
            if j > i:
                thr[i:j] = spot_threshold(t, xi, sigma, q, n + np.arange(j - i), peaks.size)
                n, count = n + (j - i), count + (j - i)
            z = float(spot_threshold(t, xi, sigma, q, n, peaks.size))
            thr[j] = z
            if not np.isfinite(x[j]) or x[j] > z:
                anomalous[j] = True  # anomalies do not touch the state
            else:  # a new peak in (t, z_q]: refit the tail
                peaks, limits, n = _cap_peaks(
                    np.append(peaks, np.float32(x[j] - t)),
                    np.append(limits, np.float32(z - t)),
                    n + 1.0,
                    self.cfg.window,
                )
                count, unfit = count + 1, unfit + 1
                if unfit >= REFIT_MIN_NEW and unfit * REFIT_FRACTION_INV >= peaks.size:
                    (xi, sigma), unfit = fit_gpd(peaks, limits), 0
            i = j + 1
        if i < x.size:
            thr[i:] = spot_threshold(t, xi, sigma, q, n + np.arange(x.size - i), peaks.size)
            n, count = n + (x.size - i), count + (x.size - i)
        new = SpotState(
            t=t, xi=xi, sigma=sigma, n=float(n), peaks=frozen(peaks), limits=frozen(limits),
            count=int(count), unfit=unfit,
        )  # fmt: skip
        return thr, anomalous, new

    @staticmethod
    def dump(state: SpotState) -> dict[str, Any]:
        return {
            "t": state.t, "xi": state.xi, "sigma": state.sigma, "n": state.n, "count": state.count,
            "unfit": state.unfit, "peaks": b64(state.peaks), "limits": b64(state.limits),
        }  # fmt: skip

    @staticmethod
    def load(d: dict[str, Any]) -> SpotState:
        return SpotState(**{**d, "peaks": unb64(d["peaks"]), "limits": unb64(d["limits"])})


def _quantile_sorted(srt: list[float], p: float) -> float:
    """Quantile with plotting position p*(n+1) (numpy's 'weibull'); clamps to the min/max at the ends."""
    h = min(max(p * (len(srt) + 1) - 1.0, 0.0), len(srt) - 1.0)
    lo = int(h)
    hi = min(lo + 1, len(srt) - 1)
    return srt[lo] + (h - lo) * (srt[hi] - srt[lo])


def quantile_threshold(sorted_scores: list[float], risk: float, anchor: float) -> float:
    """The (1 - risk) quantile of the scores, extrapolated from two anchors with an exponential tail.

    The window holds only normal scores, i.e. scores below the threshold, so its own (1 - risk) quantile
    sits below the true one and can only fall (a ratchet). Quantiles at `anchor` (the `init_quantile`,
    0.98) and at 1 - 5 * (1 - anchor) (0.90) are barely touched by that truncation; assuming an exponential
    tail Q(p) = a + b * ln(1 / (1 - p)) through them gives the level exceeded with probability `risk`.
    Exact for exponential-like tails (gamma, Weibull with shape ~1); conservative for lighter tails
    (Gaussian), optimistic for Pareto-like tails, for which SPOT (which fits the tail shape) is the mode.

    >>> srt = sorted(np.random.default_rng(0).exponential(size=20000).tolist())
    >>> round(quantile_threshold(srt, 1e-3, 0.98), 1)  # ln(1000) = 6.9
    6.9
    """
    tail_hi = 1.0 - anchor
    tail_lo = min(QUANTILE_SPAN * tail_hi, 0.5)
    q_hi, q_lo = _quantile_sorted(sorted_scores, anchor), _quantile_sorted(sorted_scores, 1.0 - tail_lo)
    b = (q_hi - q_lo) / math.log(tail_lo / tail_hi)
    return q_hi + b * math.log(tail_hi / risk)


class RollingQuantile(ThresholdRule):
    """The extrapolated (1 - risk) quantile of the last `window` normal scores (see `quantile_threshold`).

    >>> rule = RollingQuantile(ThresholdSettings(mode="quantile", risk=0.01, window=100))
    >>> thr, anomalous, state = rule.judge(rule.initial(np.arange(100.0)), np.array([50.0, 500.0]))
    >>> anomalous.tolist(), state.count
    ([False, True], 1)
    """

    mode = "quantile"
    state_type = QuantileState

    def initial(self, cal: np.ndarray) -> QuantileState:
        return QuantileState(window=frozen(cal[-self.cfg.window :]))

    def threshold(self, state: QuantileState) -> float:
        return quantile_threshold(sorted(state.window.tolist()), self.cfg.risk, self.cfg.init_quantile)

    def judge(self, st: QuantileState, x: np.ndarray) -> Judged:
        cfg = self.cfg
        thr, anomalous = np.empty(x.size), np.zeros(x.size, dtype=bool)
        buf = deque(st.window[-cfg.window :].tolist())
        srt = sorted(buf)
        count = st.count
        for i, s in enumerate(x.tolist()):
            thr[i] = z = quantile_threshold(srt, cfg.risk, cfg.init_quantile)
            if not math.isfinite(s) or s > z:
                anomalous[i] = True
                continue
            v = float(np.float32(s))  # the window stores float32, keep memory and Redis identical
            buf.append(v)
            insort(srt, v)
            count += 1
            if len(buf) > cfg.window:
                del srt[bisect_left(srt, buf.popleft())]
        return thr, anomalous, QuantileState(window=frozen(np.array(buf, dtype=np.float32)), count=count)

    @staticmethod
    def dump(state: QuantileState) -> dict[str, Any]:
        return {"count": state.count, "window": b64(state.window)}

    @staticmethod
    def load(d: dict[str, Any]) -> QuantileState:
        return QuantileState(**{**d, "window": unb64(d["window"])})


class Ewma(ThresholdRule):
    """Mean + k * std of normal scores, both exponentially weighted (West's incremental update).

    >>> rule = Ewma(ThresholdSettings(mode="ewma", ewma_k=4.0))
    >>> state = rule.initial(np.array([1.0, 3.0]))
    >>> rule.threshold(state), rule.judge(state, np.array([2.5, 7.0]))[1].tolist()
    (6.0, [False, True])
    """

    mode = "ewma"
    state_type = EwmaState

    def initial(self, cal: np.ndarray) -> EwmaState:
        return EwmaState(mean=float(cal.mean()), var=float(cal.var()))

    def threshold(self, state: EwmaState) -> float:
        return state.mean + self.cfg.ewma_k * math.sqrt(max(state.var, 0.0))

    def judge(self, st: EwmaState, x: np.ndarray) -> Judged:
        thr, anomalous = np.empty(x.size), np.zeros(x.size, dtype=bool)
        mean, var, count, a, k = st.mean, st.var, st.count, self.cfg.ewma_alpha, self.cfg.ewma_k
        for i, s in enumerate(x.tolist()):
            thr[i] = z = mean + k * math.sqrt(max(var, 0.0))
            if not math.isfinite(s) or s > z:
                anomalous[i] = True
                continue
            diff = s - mean
            mean += a * diff
            var = (1.0 - a) * (var + a * diff * diff)
            count += 1
        return thr, anomalous, EwmaState(mean=mean, var=var, count=count)

    @staticmethod
    def dump(state: EwmaState) -> dict[str, Any]:
        return {"mean": state.mean, "var": state.var, "count": state.count}

    @staticmethod
    def load(d: dict[str, Any]) -> EwmaState:
        return EwmaState(**d)


RULES: dict[str, type[ThresholdRule]] = {rule.mode: rule for rule in (Spot, RollingQuantile, Ewma)}


def rule_for(cfg: ThresholdSettings) -> ThresholdRule:
    """The rule the settings name."""
    try:
        return RULES[cfg.mode](cfg)
    except KeyError:
        raise ValueError(f"unknown threshold mode {cfg.mode!r}; expected one of {', '.join(RULES)}") from None


# ---------------------------------------------------------------- what the store calls


def initial_state(cfg: ThresholdSettings, calibration_scores: np.ndarray) -> ThresholdState:
    """The state a source starts from, fitted on a model version's calibration (normal) scores.

    >>> cal = np.random.default_rng(0).exponential(size=2000)
    >>> s = initial_state(ThresholdSettings(risk=1e-3), cal)
    >>> s.mode, s.peaks.size, round(s.t, 2), round(current_threshold(ThresholdSettings(risk=1e-3), s), 1)
    ('spot', 40, 4.01, 7.3)
    """
    cal = np.asarray(calibration_scores, dtype=np.float64).reshape(-1)
    if cal.size == 0:
        raise ValueError("calibration scores are empty; expected at least one finite score")
    if not np.isfinite(cal).all():
        raise ValueError(f"calibration scores must be finite; got {int((~np.isfinite(cal)).sum())} NaN/inf")
    return rule_for(cfg).initial(cal)


def current_threshold(cfg: ThresholdSettings, state: ThresholdState) -> float:
    """The alert threshold the next score would be judged against."""
    return RULES[state.mode](cfg).threshold(state)


def judge(cfg: ThresholdSettings, state: ThresholdState, scores: np.ndarray) -> Judged:
    """Judge `scores` in order: (threshold each was judged against, anomalous flags, new state).

    Each score meets the state left by the scores before it; only normal scores update the state.
    Non-finite scores are judged anomalous (and never update it).

    >>> cfg = ThresholdSettings(mode="quantile", risk=0.01, window=100)
    >>> state = initial_state(cfg, np.arange(100.0))
    >>> thr, anomalous, state = judge(cfg, state, np.array([50.0, 500.0]))
    >>> anomalous.tolist(), state.count
    ([False, True], 1)
    """
    if state.mode != cfg.mode:
        raise ValueError(f"state is for mode {state.mode!r} but settings say {cfg.mode!r}")
    return rule_for(cfg).judge(state, np.asarray(scores, dtype=np.float64).reshape(-1))


def to_dict(state: ThresholdState) -> dict[str, Any]:
    """A JSON-able dict (arrays as base64 little-endian float32), for embedding in a larger record."""
    rule = RULES.get(getattr(state, "mode", None))  # type: ignore[arg-type]
    if rule is None or type(state) is not rule.state_type:
        raise TypeError(f"expected a threshold state, got {type(state).__name__}")
    return {"mode": state.mode, **rule.dump(state)}


def from_dict(d: dict[str, Any]) -> ThresholdState:
    """Inverse of `to_dict`; raises ValueError on a dict that is not a threshold state."""
    try:
        d = dict(d)
        mode = d.pop("mode")
        rule = RULES.get(mode)
        if rule is not None:
            return rule.load(d)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a serialised threshold state: {exc}") from exc
    raise ValueError(f"unknown threshold mode {mode!r}; expected one of {', '.join(RULES)}")


def dumps(state: ThresholdState) -> bytes:
    """Compact orjson bytes of `to_dict`.

    >>> loads(dumps(EwmaState(mean=1.0, var=0.25, count=3)))
    EwmaState(mean=1.0, var=0.25, count=3, mode='ewma')
    """
    return orjson.dumps(to_dict(state))


def loads(data: bytes | str) -> ThresholdState:
    """Inverse of `dumps`; raises ValueError on bytes that are not a threshold state."""
    return from_dict(json_object(data, "threshold state"))
