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

`judge` scores a batch in order, each score meeting the state the scores before it left. The quantile and
EWMA rules learn normal scores only, so an anomaly never drags their threshold towards itself; the
quantile rule therefore extrapolates from quantiles below the alert level (a naive rolling (1 - risk)
quantile of truncated data ratchets down: 8e-2 false alarms at risk 1e-3). SPOT counts every exceedance
of t, with the ones judged anomalous censored at the alert level they beat, but never more of those than
its own tail expects (in the tail fit always, in the rate on a source with faults), its counts forget over
`horizon` events, and its alert level never reaches t: the state has no absorbing corner (an idle line,
a tiny calibration set), an anomaly's size never matters and faults, however frequent, do not lift the
level. benchmarks/calibration.py measures every rule over stationary laws, idle stretches, small
calibration sets, drift, a retrain and lines with faults.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import orjson

from stream_app.judging.gpd import fit_gpd, spot_threshold, tail_probability
from stream_app.judging.stored import b64, b64_bits, frozen, json_object, unb64, unb64_bits
from stream_app.settings import ThresholdSettings

log = logging.getLogger(__name__)

MIN_CAL_PEAKS = 10  # calibration scores SPOT keeps above t: fewer cannot even estimate an exponential scale
REFIT_FRACTION_INV = 20  # SPOT refits the tail once 1/20 of the kept peaks are new...
REFIT_MIN_NEW = 5  # ...and at least 5 (a refit costs ~5-10 ms; one peak among dozens barely moves it)
FAULT_FACTOR = 5.0  # SPOT calls a source faulty once it beats its alert level 5x as often as its tail expects
MAX_PASSES = 8  # SPOT judges a chunk again with its own verdicts at most this often (see `Spot._chunk`)
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
    """SPOT state: initial threshold t, GPD fit (xi, sigma) of the kept excesses, and decayed counts.

    Counts forget: every finite score multiplies `n` (observations), `n_t` (exceedances of t) and `alarms`
    by 1 - 1/horizon before adding itself, so they hold about `horizon` events and never grow without
    bound. `n_t` counts EVERY exceedance of t, admitted as a peak or judged anomalous: counting only the
    admitted ones made the rate N_t/n fall after an idle stretch until z_q reached t and nothing could be
    admitted again (an absorbing state). Non-finite scores are judged anomalous and touch nothing.

    `peaks` are the `window` newest excesses over t (float32, oldest first); an exceedance judged anomalous
    is kept `censored`, at the alert level it beat minus t (see `fit_gpd`). While an incident is open the
    store lets no exceedance of t teach the state. `limits` holds, per peak, a truncation point minus t for the
    fit: peaks that earlier versions admitted inside incidents were truncated observations (admitted only below
    the alert level); new peaks are whole (inf), and an all-inf `limits` is not stored. The tail is refitted
    once per batch at most, when `unfit` (excesses added since the last fit) reaches 5% of the kept ones and at
    least 5. `count` counts the scores judged normal since calibration (exact, for tests and metrics).

    `n_c` counts (decayed, like `n_t`) the exceedances judged anomalous and `n_e` how many of them the tail
    expects: the odds r / (1 - r) of the level met, added per exceedance judged normal. Faults are what
    exceeds that; the tail fit weighs its censored peaks down to n_e per admitted peak judged against a level
    (`cal_peaks` counts the calibration peaks still in the window, which were not), and on a `faulty` source
    (5x) the rate counts no more than n_e (see `counted_exceedances`, `_expected_censoring`). States saved
    without these fields load with zeros (anomalous exceedances then count as faults until n_e has grown, a
    negligible change to N_t).

    `alarms` and `seen` decay the same way over every finite score, learned or not (inside an incident the
    store lets a source learn its normal scores only). `high_for` counts the events since the alarm rate
    (`alarms` / `seen`) went above `stuck_factor` x risk;
    `stuck` says it stayed there for `stuck_events` (the worker turns it into a metric and a log line).
    """

    t: float
    xi: float
    sigma: float
    n: float
    n_t: float
    peaks: np.ndarray
    censored: np.ndarray
    limits: np.ndarray  # per peak, its truncation point minus t (inf: none, see `fit_gpd`)
    n_c: float = 0.0  # of n_t, the exceedances judged anomalous...
    n_e: float = 0.0  # ...and how many of those the fitted tail expects (see `counted_exceedances`)
    alarms: float = 0.0
    seen: float = 0.0
    count: int = 0
    unfit: int = 0
    cal_peaks: int = 0  # of `peaks`, the oldest ones from calibration (observed whole: none censored)
    run_excess: float | None = None  # the open run of exceedances (see `_decluster`): its largest excess so far...
    run_censored: bool = False  # ...and whether that one is censored
    high_for: int = 0
    stuck: bool = False
    mode: Mode = "spot"

    @property
    def alarm_rate(self) -> float:
        return self.alarms / self.seen if self.seen > 0 else 0.0

    def stored_arrays(self) -> tuple[str, str, str | None]:
        """`peaks`, `censored` and `limits` as stored (~11 KB for a full window; `limits` None when all inf),
        encoded once per state (kept in its __dict__: the arrays are read-only); a batch that adds no peak hands
        them on to the next state."""
        stored = self.__dict__.get("_stored_arrays")
        if stored is None:
            limits = b64(self.limits) if np.isfinite(self.limits).any() else None
            stored = self.__dict__["_stored_arrays"] = b64(self.peaks), b64_bits(self.censored), limits
        return stored


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
    arrays: ClassVar[tuple[str, ...]] = ()  # the state's array fields: large, and stored apart (see `split_dict`)

    def __init__(self, cfg: ThresholdSettings) -> None:
        self.cfg = cfg

    def initial(self, cal: np.ndarray) -> Any:
        """The state a source starts from, fitted on finite calibration (normal) scores."""
        raise NotImplementedError

    def threshold(self, state: Any) -> float:
        """The alert threshold the next score would be judged against."""
        raise NotImplementedError

    def judge(self, state: Any, x: np.ndarray, learn: np.ndarray | None = None) -> Judged:
        """(threshold each score met, anomalous flags, new state) for float64 scores `x` in order.

        `learn` (optional, one flag per score; default all True) says whether a score may teach the state.
        SPOT: False keeps the score out of every count and of the tail, judged normal or anomalous
        (inside an incident the store passes False: a fault's scores that the level it lifted now calls
        normal must not fatten the tail); scores below t are not counted either (counting them alone lowered the
        rate of exceedances through a long incident, and the level with it). Rules that learn normal scores only
        ignore it.
        """
        raise NotImplementedError

    def judge_many(
        self, states: Sequence[Any], xs: Sequence[np.ndarray], learns: Sequence[np.ndarray | None]
    ) -> list[Judged]:
        """`judge` of many sources (row i: `xs[i]` from `states[i]`); one at a time unless the rule has a pass for all."""
        return [self.judge(st, x, learn) for st, x, learn in zip(states, xs, learns, strict=True)]

    @staticmethod
    def dump(state: Any) -> dict[str, Any]:
        """The state's JSON-able fields (without `mode`)."""
        raise NotImplementedError

    @staticmethod
    def load(d: dict[str, Any]) -> Any:
        """Inverse of `dump`."""
        raise NotImplementedError


def _spot_t(cfg: ThresholdSettings, cal: np.ndarray) -> float:
    """SPOT's t: the `init_quantile` of the calibration scores, lowered to leave 10 scores above it.

    Fewer than 10 peaks cannot fit a tail (a scale from one or two peaks pins z_q near t), so a
    small calibration set moves t down to its (1 - 10/N) quantile (at most to the median) and says so:
    at the defaults (0.98, risk 1e-3) that is any set under 500 scores. The rate and the tail then keep
    learning from traffic, since every exceedance of t counts (measured in benchmarks/calibration.py).
    """
    level, n = cfg.init_quantile, cal.size
    if n * (1.0 - level) < MIN_CAL_PEAKS:
        lowered = max(1.0 - MIN_CAL_PEAKS / n, 0.5)
        log.warning(
            "%d calibration scores leave %.1f above their %.3g quantile, fewer than the %d peaks a tail fit "
            "needs for risk %g: t moves down to the %.3g quantile; calibrate on >= %d scores to keep t at %.3g",
            n, n * (1.0 - level), level, MIN_CAL_PEAKS, cfg.risk, lowered,
            math.ceil(MIN_CAL_PEAKS / (1.0 - level)), level,
        )  # fmt: skip
        level = lowered
    return float(np.quantile(cal, level))


@dataclass
class Chunk:
    """What `Spot._chunk` says about a matrix of scores, one source per row: how many of each row it judged (all of
    them, or a settled prefix), their thresholds and flags, each source's end counts (n, n_t, n_c, n_e, alarms,
    seen: 6 x sources) and the counted exceedances of t: row, position, excess (censored at the level it beat)."""

    judged: np.ndarray
    thresholds: np.ndarray
    anomalous: np.ndarray
    counts: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    excesses: np.ndarray
    censored: np.ndarray

    def replaced(self, rows: np.ndarray, sub: Chunk) -> Chunk:
        """This chunk with `rows` taken from `sub` (a chunk of those rows alone)."""
        self.judged[rows], self.thresholds[rows], self.anomalous[rows] = sub.judged, sub.thresholds, sub.anomalous
        self.counts[:, rows] = sub.counts
        keep = ~np.isin(self.rows, rows)
        self.rows = np.concatenate([self.rows[keep], rows[sub.rows]])
        self.positions = np.concatenate([self.positions[keep], sub.positions])
        self.excesses = np.concatenate([self.excesses[keep], sub.excesses])
        self.censored = np.concatenate([self.censored[keep], sub.censored])
        return self


class Spot(ThresholdRule):
    """Streaming peaks-over-threshold: z_q from a GPD fitted to the excesses over t (see `SpotState`).

    A batch is judged in one numpy pass: within it the fit (xi, sigma) is fixed and only the decayed counts
    move, which have closed forms, so each score still meets the counts left by the scores before it. The
    refit happens after the batch; per-event judging would refit a few events earlier, which moves the
    thresholds by under 6% while few peaks are kept and changes a handful of verdicts in 20k (tested). Scores are
    processed in chunks of at most 20 horizons so that the closed forms' growth factors stay below e^20. The pass
    takes every source of a batch at once, one row each (`judge_many`); a source's own judgement is the same pass
    with one row.

    >>> rule = Spot(ThresholdSettings(risk=1e-3))
    >>> state = rule.initial(np.random.default_rng(0).exponential(size=2000))
    >>> state.peaks.size, round(state.t, 2), round(rule.threshold(state), 1)
    (40, 4.01, 7.4)
    >>> thr, anomalous, state = rule.judge(state, np.array([1.0, 5.0, 50.0, 1.0]))
    >>> anomalous.tolist(), state.count, state.peaks.size, state.censored.tolist()[-1]  # 5.0, 50.0: one cluster
    ([False, False, True, False], 3, 41, True)
    """

    mode = "spot"
    state_type = SpotState
    arrays = ("peaks", "censored", "limits")

    def initial(self, cal: np.ndarray) -> SpotState:
        t = _spot_t(self.cfg, cal)
        above = cal[cal > t]
        peaks = (above - t).astype(np.float32)[-self.cfg.window :]
        xi, sigma = fit_gpd(peaks) if peaks.size else (0.0, 0.0)
        n, n_t = float(cal.size), float(above.size)
        return SpotState(
            t=t, xi=xi, sigma=sigma, n=n, n_t=n_t, n_e=n_t * _odds(self.cfg.risk, n, n_t), seen=n, peaks=frozen(peaks),
            cal_peaks=peaks.size,
            censored=frozen(np.zeros(peaks.size, bool), dtype=bool), limits=frozen(np.full(peaks.size, np.inf)),
        )  # fmt: skip

    def threshold(self, state: SpotState) -> float:
        n_t = counted_exceedances(state.n_t, state.n_c, state.n_e)
        return float(spot_threshold(state.t, state.xi, state.sigma, self.cfg.risk, state.n, n_t))

    def judge(self, st: SpotState, x: np.ndarray, learn: np.ndarray | None = None) -> Judged:
        return self.judge_many([st], [x], [learn])[0]

    def judge_many(
        self, states: Sequence[SpotState], xs: Sequence[np.ndarray], learns: Sequence[np.ndarray | None]
    ) -> list[Judged]:
        """`judge` of many sources in one numpy pass: row i of a padded matrix is source i (NaN pads: a non-finite
        score touches no count). Sources are grouped by length (powers of two), so padding at most doubles the
        work; a batch spread over many sources then costs about one pass instead of one pass per source."""
        out: list[Judged | None] = [None] * len(states)
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(int(x.size).bit_length(), []).append(i)
        for rows in groups.values():
            judged = self._judge_rows([states[i] for i in rows], [xs[i] for i in rows], [learns[i] for i in rows])
            for i, j in zip(rows, judged, strict=True):
                out[i] = j
        return out  # type: ignore[return-value]

    def _judge_rows(
        self, states: list[SpotState], xs: list[np.ndarray], learns: list[np.ndarray | None]
    ) -> list[Judged]:
        """`judge_many` of sources whose rows are padded into one matrix: one chunk over all of them, then each
        source's next state."""
        cfg = self.cfg
        lengths = np.array([x.size for x in xs])
        width = max(int(lengths.max()), 1)
        x_all = np.full((len(xs), width), np.nan)
        learn_all = None if all(lr is None for lr in learns) else np.ones((len(xs), width), bool)
        for r, (x, lr) in enumerate(zip(xs, learns, strict=True)):
            x_all[r, : x.size] = x
            if lr is not None and learn_all is not None:
                learn_all[r, : x.size] = lr
        fits = np.array([(st.t, st.xi, st.sigma) for st in states]).T
        counts = np.array([(st.n, st.n_t, st.n_c, st.n_e, st.alarms, st.seen) for st in states]).T
        span = 20 * cfg.horizon
        c = self._chunk(fits, counts, x_all[:, :span], np.minimum(lengths, span),
                        None if learn_all is None else learn_all[:, :span])  # fmt: skip
        if (c.judged < lengths).any():  # a source ran past 20 horizons or did not settle: judge in passes
            c = self._passes(fits, counts, x_all, learn_all, lengths)
        finite = np.isfinite(x_all)
        learned_normal = finite & ~c.anomalous
        if learn_all is not None:  # scores not to be learned teach nothing, judged normal or not
            learned_normal &= learn_all
        n_finite, n_learned = finite.sum(axis=1).tolist(), learned_normal.sum(axis=1).tolist()
        bounds = np.searchsorted(c.rows, np.arange(len(xs) + 1)).tolist()  # each source's exceedances
        out = []
        for r, (st, end_counts, n) in enumerate(zip(states, c.counts.T.tolist(), lengths.tolist(), strict=True)):
            new_exc = tuple(v[bounds[r] : bounds[r + 1]] for v in (c.excesses, c.censored, c.positions))
            new = self._next_state(st, end_counts, new_exc, n, n_finite[r], n_learned[r])  # type: ignore[arg-type]
            out.append((c.thresholds[r, :n], c.anomalous[r, :n], new))
        return out

    def _passes(
        self, fits: np.ndarray, counts: np.ndarray, x_all: np.ndarray, learn_all: np.ndarray | None, lengths: np.ndarray
    ) -> Chunk:
        """`_chunk` over the whole matrix in passes, each source resuming where its last chunk ended."""
        counts = counts.copy()
        thr, anomalous = np.full(x_all.shape, np.nan), np.ones(x_all.shape, bool)
        excesses = []  # (rows, positions, excesses, censored) of each pass
        pos, span, width = np.zeros(len(lengths), int), 20 * self.cfg.horizon, x_all.shape[1]
        while (left := lengths - pos).max() > 0:
            rows = np.flatnonzero(left > 0)
            cols = pos[rows, None] + np.arange(int(min(span, left[rows].max())))
            inside = cols < lengths[rows, None]
            cols = np.minimum(cols, width - 1)
            x = np.where(inside, x_all[rows[:, None], cols], np.nan)
            learn = None if learn_all is None else learn_all[rows[:, None], cols]
            c = self._chunk(fits[:, rows], counts[:, rows], x, inside.sum(axis=1), learn)
            rr, cc = np.nonzero(np.arange(cols.shape[1]) < c.judged[:, None])
            thr[rows[rr], pos[rows[rr]] + cc] = c.thresholds[rr, cc]
            anomalous[rows[rr], pos[rows[rr]] + cc] = c.anomalous[rr, cc]
            excesses.append((rows[c.rows], pos[rows[c.rows]] + c.positions, c.excesses, c.censored))
            counts[:, rows] = c.counts
            pos[rows] += c.judged
        er, ec, ex, ecens = (np.concatenate(v) for v in zip(*excesses, strict=True))
        order = np.lexsort((ec, er))  # by source, then position
        return Chunk(pos, thr, anomalous, counts, er[order], ec[order], ex[order], ecens[order])

    def _next_state(
        self,
        st: SpotState,
        counts: list[float],
        new_excesses: tuple[np.ndarray, np.ndarray, np.ndarray],
        events: int,
        n_finite: int,
        n_learned: int,
    ) -> SpotState:
        """A source's state after a batch: its end counts, its new exceedances (excesses, censored flags,
        positions) declustered into the kept peaks, the tail refitted when enough are new, the alarm-rate flags."""
        cfg = self.cfg
        n, n_t, n_c, n_e, alarms, seen = counts
        enter, enter_cens, run = _decluster((st.run_excess, st.run_censored), *new_excesses, events)
        added = enter.size
        peaks, censored, limits, cal_peaks = st.peaks, st.censored, st.limits, st.cal_peaks
        per_admitted = n_e / max(n_t - n_c, 1e-9)  # censored peaks the tail expects per admitted one
        if added:
            peaks, censored = np.concatenate([peaks, enter]), np.concatenate([censored, enter_cens])
            limits = np.concatenate([limits, np.full(added, np.inf, np.float32)])
            if faulty(n_c, n_e):  # faults would push the admitted peaks out of the window
                keep = _newest_censored(censored, _expected_censoring(censored, per_admitted, cal_peaks, exact=True)[1])
                peaks, censored, limits = peaks[keep], censored[keep], limits[keep]
            cal_peaks = max(0, cal_peaks - max(0, peaks.size - cfg.window))  # the oldest leave the window first
            peaks, censored, limits = (frozen(peaks[-cfg.window :]), frozen(censored[-cfg.window :], dtype=bool),
                                       frozen(limits[-cfg.window :]))  # fmt: skip
        xi, sigma, unfit = st.xi, st.sigma, st.unfit + added
        if unfit >= REFIT_MIN_NEW and unfit * REFIT_FRACTION_INV >= peaks.size and (~censored).any():
            weight = _expected_censoring(censored, per_admitted, cal_peaks, exact=bool(faulty(n_c, n_e)))[0]
            (xi, sigma), unfit = fit_gpd(peaks, censored, limits, weight), 0
        high = seen > 0 and alarms / seen > cfg.stuck_factor * cfg.risk
        high_for = st.high_for + n_finite if high else 0
        new = SpotState(
            t=st.t, xi=xi, sigma=sigma, n=n, n_t=n_t, n_c=n_c, n_e=n_e, peaks=peaks, censored=censored, limits=limits,
            alarms=alarms, seen=seen, count=st.count + n_learned, unfit=unfit, cal_peaks=cal_peaks, high_for=high_for,
            stuck=high_for >= cfg.stuck_events, run_excess=run[0], run_censored=run[1],
        )  # fmt: skip
        if not added and "_stored_arrays" in st.__dict__:  # the same arrays: their encoding too
            new.__dict__["_stored_arrays"] = st.__dict__["_stored_arrays"]
        return new

    def _chunk(
        self,
        fits: np.ndarray,
        counts: np.ndarray,
        x: np.ndarray,
        lengths: np.ndarray,
        learn: np.ndarray | None,
        guess: np.ndarray | None = None,
    ) -> Chunk:
        """One row of scores per source (`lengths` of them, at most 20 horizons so that the closed forms' growth
        factors stay below e^20; NaN pads), judged from the sources' (t, xi, sigma) `fits` and their counts (see
        `Chunk`).

        The counts see every finite score but those not to be learned (`learn` False). Before the
        i-th score with k_i counted ones ahead of it, a decayed count is lam^k_i * (c0 + sum of lam^-(k_j + 1) over
        the counted scores j before i); n counts all of them, whose sum is the geometric series. What the counts
        see then depends on the chunk's own verdicts on a source that may become `faulty` here (every exceedance,
        through n_c and n_e): a first guess judges them against the level the chunk starts at, and the chunk is
        judged again with the verdicts it gave until they agree, which are then the event-by-event verdicts. One
        pass almost always (the level barely moves within a batch; inside an incident the counts do not move at
        all); each pass settles at least the first verdict that changed, and after `MAX_PASSES` a source's
        settled prefix is returned. `n_e` grows by the odds of the level the chunk starts at.
        """
        (t, xi, sigma), (n0, nt0, nc0, ne0, _, _) = fits[:, :, None], counts[:, :, None]
        q, h, lam = self.cfg.risk, self.cfg.horizon, 1.0 - 1.0 / self.cfg.horizon
        finite = np.isfinite(x)
        above = finite & (x > t)
        excluded = None if learn is None else ~learn  # scores not to be learned: never counted, below t or above
        nt_start = counted_exceedances(nt0, nc0, ne0)
        odds = _odds(q, n0, nt_start)
        settled = ~faulty(nc0 + above.sum(axis=1, keepdims=True) * lam ** -lengths[:, None], ne0)  # cannot get faulty
        depends = above & ~settled  # the verdicts the counts depend on
        if guess is None:
            guess = above & (x > spot_threshold(t, xi, sigma, q, n0, nt_start)) if depends.any() else above
        counted = finite if excluded is None else finite & ~excluded
        k = np.cumsum(counted, axis=1) - counted  # counted scores before each one
        decay = lam**k
        n_i = n0 * decay + (1.0 - decay) * h
        exc = counted & above
        w_exc = np.where(exc, lam ** -(k + 1.0), 0.0)
        nt_i = decay * (nt0 + np.cumsum(w_exc, axis=1) - w_exc)
        unsettled = None
        if settled.all():  # no source can become faulty here: the counts do not depend on the verdicts
            z = spot_threshold(t, xi, sigma, q, n_i, nt_i)
        else:
            for _ in range(MAX_PASSES):
                w_c, w_e = np.where(guess, w_exc, 0.0), np.where(guess, 0.0, w_exc * odds)
                nc_i = decay * (nc0 + np.cumsum(w_c, axis=1) - w_c)
                ne_i = decay * (ne0 + np.cumsum(w_e, axis=1) - w_e)
                n_t = np.where(settled, nt_i, counted_exceedances(nt_i, nc_i, ne_i))
                z = spot_threshold(t, xi, sigma, q, n_i, n_t)
                changed = ((above & (x > z)) != guess) & depends
                if not changed.any():
                    break
                guess = above & (x > z)
            else:
                unsettled = np.flatnonzero(changed.any(axis=1))
        anomalous = ~finite | (x > z)
        end = lam ** counted.sum(axis=1)
        k_all = np.cumsum(finite, axis=1) - finite  # the alarm rate sees every finite score
        end_all = lam ** finite.sum(axis=1)
        alarm_w = np.where(finite & anomalous, lam ** -(k_all + 1.0), 0.0).sum(axis=1)
        w_total = w_exc.sum(axis=1)
        cens_w = np.where(exc & anomalous, w_exc, 0.0).sum(axis=1)
        n0, nt0, nc0, ne0, a0, seen0 = counts
        new_counts = np.array([
            n0 * end + (1.0 - end) * h,
            end * (nt0 + w_total),
            end * (nc0 + cens_w),
            end * (ne0 + odds[:, 0] * (w_total - cens_w)),
            end_all * (a0 + alarm_w),
            seen0 * end_all + (1.0 - end_all) * h,
        ])  # fmt: skip
        er, ec = np.nonzero(exc)
        cens = anomalous[er, ec]
        excess = (np.where(cens, z[er, ec], x[er, ec]) - fits[0][er]).astype(np.float32)
        out = Chunk(lengths.copy(), z, anomalous, new_counts, er, ec, excess, cens)
        if unsettled is not None:  # judge those sources again up to their first changed verdict
            first = np.argmax(changed[unsettled], axis=1)
            cut = np.arange(x.shape[1]) > first[:, None]
            sub = self._chunk(
                fits[:, unsettled], counts[:, unsettled], np.where(cut, np.nan, x[unsettled]), first + 1,
                None if learn is None else learn[unsettled], guess[unsettled] & ~cut,
            )  # fmt: skip
            out = out.replaced(unsettled, sub)
        return out

    @staticmethod
    def dump(state: SpotState) -> dict[str, Any]:
        peaks, censored, limits = state.stored_arrays()
        return {
            "t": state.t, "xi": state.xi, "sigma": state.sigma, "n": state.n, "n_t": state.n_t, "n_c": state.n_c, "n_e": state.n_e,
            "alarms": state.alarms, "seen": state.seen, "count": state.count, "unfit": state.unfit, "high_for": state.high_for,
            "cal_peaks": state.cal_peaks,
            "stuck": state.stuck, "peaks": peaks, "censored": censored,
            "limits": limits, "run_excess": state.run_excess, "run_censored": state.run_censored,
        }  # fmt: skip

    @staticmethod
    def load(d: dict[str, Any]) -> SpotState:
        peaks = unb64(d["peaks"])
        limits = unb64(d["limits"]) if d["limits"] is not None else frozen(np.full(peaks.size, np.inf))
        return SpotState(**{**d, "peaks": peaks, "censored": unb64_bits(d["censored"], peaks.size), "limits": limits})


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
    arrays = ("window",)

    def initial(self, cal: np.ndarray) -> QuantileState:
        return QuantileState(window=frozen(cal[-self.cfg.window :]))

    def threshold(self, state: QuantileState) -> float:
        return quantile_threshold(sorted(state.window.tolist()), self.cfg.risk, self.cfg.init_quantile)

    def judge(self, st: QuantileState, x: np.ndarray, learn: np.ndarray | None = None) -> Judged:
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

    def judge(self, st: EwmaState, x: np.ndarray, learn: np.ndarray | None = None) -> Judged:
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


class CalibrationError(ValueError):
    """A model version's calibration scores cannot start a threshold (missing, empty or non-finite)."""


def initial_state(cfg: ThresholdSettings, calibration_scores: np.ndarray | None) -> ThresholdState:
    """The state a source starts from, fitted on a model version's calibration (normal) scores.

    >>> cal = np.random.default_rng(0).exponential(size=2000)
    >>> s = initial_state(ThresholdSettings(risk=1e-3), cal)
    >>> s.mode, s.peaks.size, round(s.t, 2), round(current_threshold(ThresholdSettings(risk=1e-3), s), 1)
    ('spot', 40, 4.01, 7.4)
    """
    return rule_for(cfg).initial(checked_calibration(calibration_scores))


def checked_calibration(calibration_scores: np.ndarray | None) -> np.ndarray:
    """The scores as float64 [N], or CalibrationError when a threshold cannot start from them.

    >>> checked_calibration(np.array([np.nan]))
    Traceback (most recent call last):
    ...
    stream_app.judging.thresholds.CalibrationError: calibration scores must be finite; got 1 NaN/inf
    """
    if calibration_scores is None:
        raise CalibrationError("no calibration scores; expected an array of finite scores of normal data")
    try:
        cal = np.asarray(calibration_scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration scores are not numbers: {exc}") from None
    if cal.size == 0:
        raise CalibrationError("calibration scores are empty; expected at least one finite score")
    if not np.isfinite(cal).all():
        raise CalibrationError(f"calibration scores must be finite; got {int((~np.isfinite(cal)).sum())} NaN/inf")
    if cal.max() <= cal.min():  # no score above any quantile: every later exceedance an alarm, for good
        raise CalibrationError(
            f"calibration scores have no spread ({cal.size} equal to {cal[0]:g}); a threshold needs scores of "
            "normal data that vary (a model that scores everything alike has not learned the data)"
        )
    return cal


def current_threshold(cfg: ThresholdSettings, state: ThresholdState) -> float:
    """The alert threshold the next score would be judged against."""
    return RULES[state.mode](cfg).threshold(state)


def _odds(risk: float, n: Any, n_t: Any) -> Any:
    """r / (1 - r) for r = `tail_probability`: how many exceedances of t a stationary source puts above the alert
    level for each one below it (counts may be arrays, one source per row)."""
    r = tail_probability(risk, n, n_t)
    return r / (1.0 - r)


def faulty(n_c: Any, n_e: Any) -> Any:
    """Whether a source beats its alert level more than `FAULT_FACTOR` times as often as its tail expects."""
    return n_c > FAULT_FACTOR * n_e


def counted_exceedances(n_t: Any, n_c: Any, n_e: Any) -> Any:
    """N_t as SPOT's rate sees it: every exceedance of t, but on a `faulty` source the ones judged anomalous only
    up to the n_e its tail expects.

    n_e adds, per exceedance judged normal, the odds r / (1 - r) of the level it met: the exceedances a
    stationary source puts above that level alongside it. Once the level is calibrated (r = risk * n / N_t)
    that is n_e = risk * n, and n_c ~ n_e; right after an idle stretch the level sits at t + the median
    excess (r = 1/2), half the exceedances beat it, and n_e follows (a fixed risk * n would call them faults).
    Faults beat the level far more often: counted in full they made the estimated P(x > t) = N_t / n grow with
    their share f of the events (0.02 -> 0.20 with 19% faults), the level rise, the faults below it enter the fit
    as normal peaks and the level go above the faults (measured: 6.9 -> 54, fault recall 0.002). Counted up
    to n_e, N_t / n stays at P(x > t) + risk whatever f is. Below the factor (5: a 20% fault line sits at ~190,
    stationary scores reached up to 3.9 after calibrating on 50-200 scores) every exceedance counts, as in SPOT:
    a level that is too low keeps being lifted by its own extra alarms (with a factor of 2, one such source
    stayed at 3-5x risk for 300k events), and faults rarer than that move N_t / n by at most 4 x risk, which
    the tail cap keeps from compounding (see `_expected_censoring`). Capped, no absorbing state either: if a normal score beats z with probability
    s > risk, the admitted exceedances (rate P(x > t) - s) still count in full, and the level they give is
    above z whenever risk < s < P(x > t), since (s - risk)(P(x > t) - s) > 0: z climbs back to the
    calibrated level, its one fixed point.

    >>> float(counted_exceedances(100.0, 60.0, 10.0)), float(counted_exceedances(100.0, 40.0, 10.0))
    (50.0, 100.0)
    """
    return n_t - np.where(faulty(n_c, n_e), n_c - n_e, 0.0)


def _expected_censoring(censored: np.ndarray, per_admitted: float, cal_peaks: int, exact: bool) -> tuple[float, int]:
    """(weight, count) of the censored peaks the tail fit takes: as many in all as the tail expects, spread evenly
    over them; and how many of the newest a faulty source keeps in its window.

    The tail expects `per_admitted` censored peaks per admitted one judged against a level (n_e per exceedance
    judged normal, see `counted_exceedances`); the `cal_peaks` calibration peaks do not count, calibration saw
    its exceedances whole. A run of faults beats the level far more often, and fitting all of them as censored
    normal scores makes the tail heavier after every fault burst, until the level sits above the faults
    (measured: 7.9 -> ~400 on exponential scores with a 30-event burst every 1,000). Any surplus ratchets: the
    fit puts the level where the tail expects fewer censored peaks than it keeps, the faults beat the new level
    as often, and so on (measured with faults creeping up to 3x risk: 7.1 -> 24, fault recall 0.65, uncapped;
    a whole number of peaks, or calibration peaks counted, was surplus enough for a line of 20% faults judged
    event by event to run away from a fit of ~40 peaks). So on a `faulty` source (`exact`) the fit takes exactly
    the expected weight, and the peaks beyond it (rounded up) leave the window, which keeps ~`window` admitted
    peaks (1870 of 2000 with 20% faults, ~100-170 otherwise). Elsewhere the censored peaks are mostly normal
    ones and a count above the expected one by its Poisson noise (sqrt + 1) is kept whole: cutting the noise
    one-sidedly made the tail too light (stationary false alarms 1.3-1.45x risk instead of 1.1-1.15x; a source
    calibrated on 200 scores whose first fit was too light stayed above 3x risk for 300k events).
    The count is rounded up, but a count an integer away only by rounding is that integer: at the cap R_MAX the
    odds are 1 and the expected count is a whole number, which float noise would round up or not.

    >>> _expected_censoring(np.array([False, True, True, False, True]), per_admitted=0.75, cal_peaks=0, exact=True)
    (0.5, 2)
    """
    expected = max(int((~censored).sum()) - cal_peaks, 0) * per_admitted
    if not exact:
        expected += math.sqrt(expected) + 1.0
    n_cens = int(censored.sum())
    return (min(1.0, expected / n_cens) if n_cens else 1.0), min(math.ceil(expected - 1e-9), n_cens)


Run = tuple[float | None, bool]
_NO_PEAKS, _NO_CENSORED = frozen(np.zeros(0, np.float32)), frozen(np.zeros(0, bool), dtype=bool)


def _decluster(
    run: Run, excess: np.ndarray, censored: np.ndarray, at: np.ndarray, events: int
) -> tuple[np.ndarray, np.ndarray, Run]:
    """Runs declustering of a batch's new exceedances (Coles 2001, 5.3.2, run length 1): consecutive exceedances
    are one cluster and enter the tail fit as its largest excess (censored if that one is); returns the clusters
    that ended, oldest first, and the run still open at the batch's end. `at`: the exceedances' positions among
    the batch's `events`; `run`: the open run carried in (its largest excess, censored), None when there is none.

    Why: the fit assumes independent excesses, and a fault is a run. One scoring just above the alert level
    beats it now and then; its scores in between are exceedances judged normal, far out in the tail, and each
    one learned made the tail heavier: on the demo's pump line at risk 1e-4 a 14-event offset fault (two alarms,
    too few for an incident) took the level from 5.5 to 13.7. As one cluster it is one censored peak. The rate
    N_t / n still counts every exceedance (per event, as the alert level is), and independent scores barely
    cluster: at t, the 0.98 quantile, 2% of exceedances follow another.

    >>> out = _decluster((0.5, False), np.array([1.0, 3.0, 2.0, 0.2], np.float32), np.array([0, 1, 0, 0], bool),
    ...                  np.array([0, 1, 2, 7]), 8)
    >>> [a.tolist() for a in out[:2]], out[2]  # 0.5 continued into 1.0, 3.0 (censored), 2.0; 0.2 runs on
    ([[3.0], [True]], (0.20000000298023224, False))
    """
    best, best_cens = run
    if not excess.size and best is None:  # most batches of most sources
        return _NO_PEAKS, _NO_CENSORED, (None, False)
    values, cens = excess.tolist(), censored.tolist()
    ends: list[float] = []
    ends_cens: list[bool] = []
    last = -1 if best is not None else -2  # the open run's last position, just before this batch
    for p, v, c in zip(at.tolist(), values, cens, strict=True):
        if p != last + 1 and best is not None:  # a gap closed the run
            ends.append(best)
            ends_cens.append(best_cens)
            best = None
        if best is None or v > best:
            best, best_cens = v, c
        last = p
    if best is not None and last < events - 1:  # the batch ends below t: the run is over
        ends.append(best)
        ends_cens.append(best_cens)
        best, best_cens = None, False
    return np.array(ends, np.float32), np.array(ends_cens, bool), (best, best_cens)


def _newest_censored(censored: np.ndarray, count: int) -> np.ndarray:
    """Which peaks to keep: every admitted one and the `count` newest censored ones."""
    keep = ~censored
    idx = np.flatnonzero(censored)
    keep[idx[idx.size - count :]] = True
    return keep


def judge(cfg: ThresholdSettings, state: ThresholdState, scores: np.ndarray, learn: np.ndarray | None = None) -> Judged:
    """Judge `scores` in order: (threshold each was judged against, anomalous flags, new state).

    Each score meets the state left by the scores before it. Non-finite scores are judged anomalous and
    never update the state. The quantile and EWMA rules learn normal scores only; SPOT also counts
    anomalous exceedances (censored at the alert level, see `Spot`) unless their `learn` flag is False.

    >>> cfg = ThresholdSettings(mode="quantile", risk=0.01, window=100)
    >>> state = initial_state(cfg, np.arange(100.0))
    >>> thr, anomalous, state = judge(cfg, state, np.array([50.0, 500.0]))
    >>> anomalous.tolist(), state.count
    ([False, True], 1)
    """
    return judge_many(cfg, [state], [scores], [learn])[0]


def judge_many(
    cfg: ThresholdSettings,
    states: Sequence[ThresholdState],
    scores: Sequence[np.ndarray],
    learns: Sequence[np.ndarray | None],
) -> list[Judged]:
    """`judge` of many sources' scores (row i: `scores[i]` from `states[i]`), in one numpy pass where the rule has
    one (SPOT): a batch spread over many sources costs about one pass instead of one per source.

    >>> cfg = ThresholdSettings(risk=1e-3)
    >>> s = initial_state(cfg, np.random.default_rng(0).exponential(size=2000))
    >>> [a.tolist() for _, a, _ in judge_many(cfg, [s, s], [np.array([1.0, 50.0]), np.array([2.0])], [None, None])]
    [[False, True], [False]]
    """
    xs = [np.asarray(x, dtype=np.float64).reshape(-1) for x in scores]
    for st, x, learn in zip(states, xs, learns, strict=True):
        if st.mode != cfg.mode:
            raise ValueError(f"state is for mode {st.mode!r} but settings say {cfg.mode!r}")
        if learn is not None and np.shape(learn) != x.shape:
            raise ValueError(f"need one learn flag per score: {x.size} scores, {np.size(learn)} flags")
    return rule_for(cfg).judge_many(states, xs, learns)


def judge_stream(
    cfg: ThresholdSettings, state: ThresholdState, scores: np.ndarray, batch: int, learn: np.ndarray | None = None
) -> Judged:
    """`judge` over a long stream in micro-batches of `batch`, as a worker meets it (tests and benchmarks): the
    thresholds and flags of every score, and the final state. `learn`: one flag per score, or None."""
    thr, flags = [], []
    for b in range(0, len(scores), batch):
        z, a, state = judge(cfg, state, scores[b : b + batch], None if learn is None else learn[b : b + batch])
        thr.append(z)
        flags.append(a)
    return np.concatenate(thr), np.concatenate(flags), state


def to_dict(state: ThresholdState) -> dict[str, Any]:
    """A JSON-able dict (arrays as base64 little-endian float32), for embedding in a larger record."""
    rule = RULES.get(getattr(state, "mode", None))  # type: ignore[arg-type]
    if rule is None or type(state) is not rule.state_type:
        raise TypeError(f"expected a threshold state, got {type(state).__name__}")
    return {"mode": state.mode, **rule.dump(state)}


def split_dict(state: ThresholdState) -> tuple[dict[str, Any], dict[str, Any]]:
    """`to_dict` as (the small fields, the array fields): a source's arrays (SPOT's peak window: ~22 KB when full)
    change only when a batch adds a peak, while its counts change every batch, so they are stored apart."""
    d = to_dict(state)
    return d, {name: d.pop(name) for name in RULES[state.mode].arrays}


def same_arrays(a: ThresholdState, b: ThresholdState) -> bool:
    """Whether two states hold the very same arrays (a batch that adds no peak hands them on unchanged)."""
    return a.mode == b.mode and all(getattr(a, f) is getattr(b, f) for f in RULES[a.mode].arrays)


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
