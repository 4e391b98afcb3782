"""Per-source threshold and incident state in Redis, shared by every worker, one round trip per micro-batch.

Each (model, version, threshold settings, source) has one Redis hash
`{prefix}:thr:{model}:{version}:{mode}-{settings hash}:{source}` with a version counter `v`, the state `s`
(threshold counts and incident state in one orjson value), the threshold's arrays `a` (SPOT's peak window,
~11-22 KB when full), which a batch rewrites only when it adds a peak, and the verdicts of the source's last
batches in ring fields (batch i in `r{i mod 64}`; a batch writes its own and deletes the one leaving the
ring). The mode and an 8-hex hash of the threshold settings are in the key so that a settings change starts every source from
calibration again, instead of meeting a state made for other settings (which failed every batch when the mode
changed). A worker keeps the last state it saw of each key, computes the batch's verdicts and new states
locally with the pure functions (`thresholds.judge_many`: every source in one pass, `incidents.step`), and
writes all of the batch's keys with ONE Lua call that compare-and-sets every key on its version. A key whose stored version differs (another worker wrote it, or
this cache is cold after a restart) is not written; the script returns its stored state instead, and only
those sources are recomputed and retried. Losers queue for the key's next writes, so retries cannot starve
(measured: 8 workers hammering the same 2 sources lost none of 51k updates). So the steady state costs one
round trip per batch, and concurrent workers never lose an update. A key that does not exist yet has
version 0 and starts from the model version's calibration scores, so a new model version starts fresh.
On a Redis Cluster the keys carry a `{model:gNN}` hash tag and the batch is one script call per slot (see
`ThresholdStore.__init__`).
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import logging
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from stream_app.judging import incidents, thresholds
from stream_app.judging.history import History, Sequences
from stream_app.judging.stored import json_object
from stream_app.settings import IncidentSettings, RedisSettings, ThresholdSettings

log = logging.getLogger(__name__)

SEVERITY_CAP = 1e6  # severity of NaN/inf scores, and the bound of every severity (keeps alerts JSON-finite)
MAX_ATTEMPTS = 32  # CAS attempts per batch before giving up on saving a source (a fair queue: ~1 per rival worker)
REPLAY_BATCHES = 4  # judged batches remembered per source: more than a worker has unsettled (consumer.MAX_IN_FLIGHT)
MAX_BOUNCES = 16  # bounces of others, without a sign of life from the queue's head, before it is dropped
SLOT_GROUPS: int = RedisSettings.model_fields["slot_groups"].default  # cluster: hash-tag groups per model

# KEYS[i]: a state hash. ARGV[1]: the caller's token (32 hex chars); then 6 per key, from ARGV[6i-4]: the
# version the caller computed from; the new state without its threshold's arrays and remembered batches (field
# `s`); those arrays (field `a`), or '' when the stored ones stand; the field of the ring slot its newest batch
# goes to (`r0`, `r1`...), or '' for none; that batch; the slot of the batch it pushes out of the ring, or ''.
# Per key: written -> the new version; stale -> {stored version, stored s, stored a, then every ring slot
# stored, in any order: each names its batch's number}. Fairness: a plain CAS lets a worker starve, its
# retries landing just after another worker's next batch (seen in tests: 8 lost attempts in a row). So a loser
# joins the key's queue `q` (tokens, oldest first) and only the queue's head may write while the queue is not
# empty; the head's retry carries the stored version it was just sent, so it succeeds and leaves the queue.
# Writers bounced while the head stays silent are counted (`qb`); after MAX_BOUNCES the head is presumed dead
# and dropped.
ARGS_PER_KEY = 6
RING_NAMES = 64  # batch i is remembered in field r{i % 64}: readers and writers agree whatever their ring size
RING_FIELD = re.compile(rb"r\d+")  # the ring slots' fields: r0, r1...
CAS_SCRIPT = """
local token = ARGV[1]
local L = string.len(token)
local out = {}
for i, key in ipairs(KEYS) do
  local at = 6 * i - 4
  local expected = tonumber(ARGV[at])
  local f = redis.call('HMGET', key, 'v', 'q', 'qb')
  local stored = tonumber(f[1]) or 0
  local q = f[2] or ''
  local qb = tonumber(f[3]) or 0
  local head = string.sub(q, 1, L)
  if head == token then
    qb = 0
  elseif head ~= '' and qb >= MAX_BOUNCES then
    q = string.sub(q, L + 1)
    qb = 0
    head = string.sub(q, 1, L)
  end
  local blocked = head ~= '' and head ~= token
  if stored == expected and not blocked then
    redis.call('HSET', key, 'v', stored + 1, 's', ARGV[at + 1])
    if ARGV[at + 2] ~= '' then
      redis.call('HSET', key, 'a', ARGV[at + 2])
    end
    if ARGV[at + 3] ~= '' then
      redis.call('HSET', key, ARGV[at + 3], ARGV[at + 4])
    end
    if ARGV[at + 5] ~= '' then
      redis.call('HDEL', key, ARGV[at + 5])
    end
    if head == token then
      q = string.sub(q, L + 1)
    end
    out[i] = stored + 1
  else
    if blocked and stored == expected then
      qb = qb + 1
    end
    if not string.find(q, token, 1, true) then
      q = q .. token
    end
    local reply = {stored, '', ''}
    local all = redis.call('HGETALL', key)
    for j = 1, #all, 2 do
      local name = all[j]
      if name == 's' then
        reply[2] = all[j + 1]
      elseif name == 'a' then
        reply[3] = all[j + 1]
      elseif string.match(name, '^r%d+$') then
        reply[#reply + 1] = all[j + 1]
      end
    end
    out[i] = reply
  end
  if q ~= (f[2] or '') or qb ~= (tonumber(f[3]) or 0) then
    redis.call('HSET', key, 'q', q, 'qb', qb)
  end
  if TTL_MS > 0 then
    redis.call('PEXPIRE', key, TTL_MS)
  end
end
return out
""".replace("MAX_BOUNCES", str(MAX_BOUNCES))


class Judgement(NamedTuple):
    """The verdict on one score (a named tuple: a batch builds hundreds, ~4x cheaper than a dataclass).

    `severity` = 1 + (score - threshold) / |threshold|, which is score / threshold for a positive
    threshold: 1 at the threshold, above 1 for anomalies, and still increasing in the score when a scorer's
    scores are negative. Bounded by +-1e6; NaN/inf scores get 1e6. `stuck`: the source's alarm rate has
    stayed above `stuck_factor` x risk for `stuck_events` events (SPOT), see `ThresholdStore.stuck`.
    """

    source: str
    score: float
    threshold: float
    anomalous: bool
    severity: float
    incident_id: str | None
    incident_event: str | None  # "opened" | "closed" | None
    stuck: bool = False


@dataclass(frozen=True)
class JudgedBatch:
    """The verdicts one judgement gave a source's events, kept so a redelivery gets them again (columns: compact
    in Redis; the source is the key's, and severity follows from score and threshold)."""

    keys: tuple[str, ...]
    scores: tuple[float, ...]
    thresholds: tuple[float, ...]
    anomalous: tuple[bool, ...]
    incident_ids: tuple[str | None, ...]
    incident_events: tuple[str | None, ...]
    stuck: bool
    number: int | None = None  # the source's batch count when it was judged; a ring slot is read by it

    def stored(self) -> bytes:
        """`to_dict` as JSON, serialised once (kept in its __dict__): the ring slot it is written to, and a whole
        state carrying it, send these bytes."""
        stored = self.__dict__.get("_stored")
        if stored is None:
            stored = self.__dict__["_stored"] = orjson.dumps(self.to_dict())
        return stored

    def to_dict(self) -> dict:
        return {"k": self.keys, "s": self.scores, "t": self.thresholds, "a": self.anomalous,
                "i": self.incident_ids, "e": self.incident_events, "x": self.stuck, "b": self.number}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> JudgedBatch:
        k, s, t, a, i, e = (tuple(d[c]) for c in "kstaie")
        if not len(k) == len(s) == len(t) == len(a) == len(i) == len(e):
            raise ValueError("judged batch columns differ in length")
        number = d.get("b")
        return cls(k, s, t, a, i, e, bool(d["x"]), number if type(number) is int else None)

    def judgements(self, source: str) -> dict[str, Judgement]:
        sev = severities(np.asarray(self.scores, np.float64), np.asarray(self.thresholds, np.float64)).tolist()
        rows = zip([source] * len(self.keys), self.scores, self.thresholds, self.anomalous, sev,
                   self.incident_ids, self.incident_events, [self.stuck] * len(self.keys), strict=True)  # fmt: skip
        return dict(zip(self.keys, map(_new_judgement, rows), strict=True))


@dataclass(frozen=True)
class SourceState:
    """What one Redis key holds: the threshold state and the incident state of a source, the verdicts of its
    last judged batches (`recent`: replayed for events judged again, which the state does not absorb twice;
    `batches` counts every batch it judged, which places each in its ring slot) and, for a windowed model, its
    last raw rows (`history`: what its next events are scored after)."""

    threshold: thresholds.ThresholdState
    incident: incidents.IncidentState
    recent: tuple[JudgedBatch, ...] = ()
    history: History | None = None
    batches: int = 0

    def dumps(self) -> bytes:
        """The whole state as one JSON object (the inverse of `loads`)."""
        return self._dumps(thresholds.to_dict(self.threshold), recent=True)

    def dumps_split(self, arrays: bool = True) -> tuple[bytes, bytes]:
        """(the state without its threshold's arrays and its remembered batches, those arrays): what a Redis key's
        fields `s` and `a` hold (`newest_slot` gives the batches' fields); b"" for the arrays when not wanted (the
        stored ones stand), so they are not serialised for nothing."""
        thr, array_fields = thresholds.split_dict(self.threshold)
        return self._dumps(thr, recent=False), orjson.dumps(array_fields) if arrays else b""

    def _dumps(self, thr: dict[str, Any], recent: bool) -> bytes:
        d: dict[str, Any] = {"thr": thr, "inc": self.incident.to_dict(), "n": self.batches}
        if recent:
            d["recent"] = [orjson.Fragment(b.stored()) for b in self.recent]
        if self.history is not None:
            d["hist"] = self.history.to_dict()
        return orjson.dumps(d)

    def newest_slot(self, ring: int) -> tuple[str, bytes, str]:
        """(field, value) of the newest remembered batch, and the field of the one it pushes out of a ring of
        `ring` ('' for none): the i-th batch judged goes to `r{i % RING_NAMES}` and the write deletes batch
        i - ring's, so a write sends one batch (~80 bytes an event) instead of all the remembered ones. The
        names do not depend on the ring's size, and each value names its batch's number, so workers whose
        `replay_batches` differ (a restart with a new setting, a rollout) never overwrite each other's batches."""
        i = self.batches - 1
        return f"r{i % RING_NAMES}", self.recent[-1].stored(), f"r{(i - ring) % RING_NAMES}" if i >= ring else ""

    @classmethod
    def loads(cls, data: bytes | str, arrays: bytes | str | None = None) -> SourceState:
        """The state `dumps` wrote, or `dumps_split` wrote as (data, arrays)."""
        return cls.loads_stored(data, arrays)[0]

    @classmethod
    def loads_stored(
        cls, data: bytes | str, arrays: bytes | str | None, slots: Sequence[bytes | str | None] = (), keep: int = 0
    ) -> tuple[SourceState, bool]:
        """The state in a key's fields `s`, `a` and ring slots `r0`, `r1`... (`slots`, any order; of them the
        batches among the last `keep` judged, default as many as there are slots), and whether its arrays are
        stored apart in `a`: a state written whole, by an earlier version, holds them in `s` (and its remembered
        batches, which name events by their alert ids: no event is keyed so now)."""
        d = json_object(data, "source state")
        try:
            thr = d["thr"]
            apart = bool(arrays) and not any(f in thr for f in thresholds.RULES[thr["mode"]].arrays)
            if apart:
                thr.update(json_object(arrays, "threshold arrays"))  # type: ignore[arg-type]
            batches = int(d.get("n", 0))
            if "recent" in d:
                recent = tuple(JudgedBatch.from_dict(b) for b in d["recent"])
                batches = max(batches, len(recent))
            else:  # the ring: the slots' batches that are among the last `keep`, oldest first
                first = batches - (keep or len(slots))
                found = [JudgedBatch.from_dict(json_object(b, "remembered batch")) for b in slots if b]
                held = [b for b in found if b.number is not None and first <= b.number < batches]
                recent = tuple(sorted(held, key=lambda b: b.number or 0))
            history = History.from_dict(d["hist"]) if d.get("hist") is not None else None
            incident = incidents.IncidentState.from_dict(d["inc"])
            state = cls(thresholds.from_dict(thr), incident, recent, history, batches)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a serialised source state: {exc}") from exc
        return state, apart

    def judged(self, source: str, keys: Sequence[str]) -> dict[str, Judgement]:
        """The remembered verdicts of those of `keys` already judged (usually none: checked without decoding)."""
        out: dict[str, Judgement] = {}
        wanted = set(keys)
        for b in self.recent:
            if not wanted.isdisjoint(b.keys):
                out.update(b.judgements(source))
        return out


class SourceBatch(NamedTuple):
    """One source's events of a batch, judged from `state`: a windowed model's `history` after them (only new
    events extend it) and how many of them were scored with padded windows (`warmup`)."""

    state: SourceState
    source: str
    scores: np.ndarray
    keys: list[str]
    history: History | None = None
    warmup: int = 0

    def only(self, rows: Sequence[int]) -> SourceBatch:
        return self._replace(scores=self.scores[rows], keys=[self.keys[i] for i in rows])

    def settled(self) -> np.ndarray:
        """The events scored with a full window (all of them but a windowed model's first `warmup`)."""
        return np.arange(self.scores.size) >= self.warmup

    def flags(self, anomalous: np.ndarray) -> list[bool]:
        """The verdicts of the events scored with a full window (the others are never anomalous)."""
        return (anomalous & self.settled() if self.warmup else anomalous).tolist()

    def learn(self) -> np.ndarray | None:
        """Which events may teach the threshold (None: all): none while an incident is open, none in warm-up (an
        incident opening in the batch is handled after a first judgement: `_judge_new`)."""
        learn = None if self.state.incident.open_id is None else np.zeros(self.scores.size, bool)
        if self.warmup:
            learn = self.settled() if learn is None else learn
        return learn


_new_judgement = functools.partial(tuple.__new__, Judgement)  # from a row, without _make's Python frame


def severities(scores: np.ndarray, thresholds_: np.ndarray) -> np.ndarray:
    """`severity` of many scores at once."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = 1.0 + (scores - thresholds_) / np.maximum(np.abs(thresholds_), 1e-12)
    return np.where(np.isfinite(scores), np.clip(s, -SEVERITY_CAP, SEVERITY_CAP), SEVERITY_CAP)


def settings_tag(cfg: ThresholdSettings) -> str:
    """`{mode}-{8 hex of sha1 over the settings}`, the part of a key that pins the threshold settings.

    >>> settings_tag(ThresholdSettings()) == settings_tag(ThresholdSettings()) != settings_tag(ThresholdSettings(risk=1e-4))
    True
    """
    return f"{cfg.mode}-{hashlib.sha1(cfg.model_dump_json().encode()).hexdigest()[:8]}"


def severity(score: float, threshold: float) -> float:
    """See `Judgement`.

    >>> severity(6.0, 3.0), severity(-1.0, -2.0), severity(float("nan"), 3.0)
    (2.0, 1.5, 1000000.0)
    """
    if not math.isfinite(score):
        return SEVERITY_CAP
    s = 1.0 + (score - threshold) / max(abs(threshold), 1e-12)
    return min(max(s, -SEVERITY_CAP), SEVERITY_CAP)


class ThresholdStore:
    """Judges micro-batches of scores against per-source thresholds kept in Redis.

    Correctness never rests on the local cache, only the round-trip count does: a stale entry costs one
    conflict and a retry. So one instance may serve several tasks, and many instances (workers) may share
    the keys. The first call for a (model, version) fits the initial state from `calibration_scores` once
    and reuses it for every new source of that version; `initial` does it ahead, at model load, and raises
    `CalibrationError` for a version whose calibration scores are missing or non-finite (keep the current
    version serving then).

    From the event that opens an incident until a batch starts with none open, a source learns nothing, judged
    normal or not: a persisting fault must not teach SPOT that it is normal, and its scores that a level lifted
    by its first alarms now calls normal would fatten the tail (measured on the demo's pump line: the level
    went 4.8 -> 17 and later faults went unseen). Scores below t are not counted either (counted alone, they
    lowered the rate of exceedances and the level through a long incident). A drift is learned between
    incidents (an incident closes after `close_m` normal events), or by retraining. `stuck` maps
    (model, version, source) to the alarm rate of each source whose state is flagged stuck (see
    `SpotState`); a warning is logged when a source becomes stuck.

    Usage (needs Redis, so not a doctest):
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        store.initial("sensors", "v3", calibration)   # at model load: CalibrationError refuses the version
        verdicts = await store.judge("sensors", "v3", calibration, sources, scores, event_keys)
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        threshold_cfg: ThresholdSettings,
        incident_cfg: IncidentSettings,
        key_prefix: str,
        max_attempts: int = MAX_ATTEMPTS,
        state_ttl_s: float | None = None,
        replay_batches: int = REPLAY_BATCHES,
        slot_groups: int = SLOT_GROUPS,
    ) -> None:
        self.redis = redis
        self.threshold_cfg = threshold_cfg
        self.incident_cfg = incident_cfg
        self.key_prefix = key_prefix
        self.max_attempts = max_attempts
        self.replay_batches = max(1, replay_batches)
        # A source silent for `state_ttl_s` loses its state (producers choose source names: unbounded otherwise).
        ttl_ms = int(state_ttl_s * 1000) if state_ttl_s else 0
        self._script = CAS_SCRIPT.replace("TTL_MS", str(ttl_ms))
        self._cas = redis.register_script(self._script)
        self._token = uuid.uuid4().hex  # its place in the keys' write queues
        # key -> (version, state, whether Redis holds its arrays apart in field `a`) last seen in Redis
        self._cache: dict[str, tuple[int, SourceState, bool]] = {}
        self._initial: dict[tuple[str, str], thresholds.ThresholdState] = {}  # (model, version) -> fresh
        self.round_trips = 0  # Redis round trips made (CAS script calls and reads)
        self.conflicts = 0  # keys whose compare-and-set found another version (retried)
        self.unsaved = 0  # source updates given up after max_attempts (verdicts still returned)
        self.stuck: dict[tuple[str, str, str], float] = {}  # (model, version, source) -> alarm rate
        self._tag = settings_tag(threshold_cfg)
        # Redis Cluster runs a script only over keys of one slot. There a key carries the hash tag `{model:gNN}`,
        # NN = blake2b(source) mod slot_groups (crc32 left half the groups empty for names like `line-3/press-5`):
        # a model's sources spread over up to `slot_groups` slots (so over the masters), and a batch makes one
        # script call per slot it touches, concurrently. One server (or Sentinel's primary): no tag, one call
        # per batch (0 here).
        self.slot_groups = slot_groups if isinstance(redis, RedisCluster) else 0

    @staticmethod
    def parse_key(key: str, key_prefix: str) -> tuple[str, str, str, str] | None:
        """(model, version, rule tag, source) of a threshold key written by `key`, None for other keys; a
        cluster key's `{model:gNN}` hash tag gives the model.

        >>> ThresholdStore.parse_key("lw:thr:sensors:0003:spot-1a2b3c4d:line-1/m:0", "lw")
        ('sensors', '0003', 'spot-1a2b3c4d', 'line-1/m:0')
        >>> ThresholdStore.parse_key("lw:thr:{sensors:g07}:0003:spot-1a2b3c4d:line-1/m:0", "lw")
        ('sensors', '0003', 'spot-1a2b3c4d', 'line-1/m:0')
        """
        head = f"{key_prefix}:thr:"
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        if rest.startswith("{"):
            tag, closed, rest = rest[1:].partition("}:")
            model, _, group = tag.rpartition(":g")
            if not (closed and model and group.isdigit()):
                return None
            rest = f"{model}:{rest}"
        parts = rest.split(":", 3)
        return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None

    def forget(self, model: str, source: str) -> None:
        """Drop this worker's cached state of a source (its Redis key expires on its own when idle)."""
        for key in [
            k for k in self._cache if (p := self.parse_key(k, self.key_prefix)) and p[0] == model and p[3] == source
        ]:
            del self._cache[key]

    def key(self, model: str, version: str, source: str) -> str:
        if self.slot_groups:
            group = int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "big") % self.slot_groups
            return f"{self.key_prefix}:thr:{{{model}:g{group:02d}}}:{version}:{self._tag}:{source}"
        return f"{self.key_prefix}:thr:{model}:{version}:{self._tag}:{source}"

    def initial(self, model: str, version: str, calibration_scores: np.ndarray | None) -> thresholds.ThresholdState:
        """The state every new source of (model, version) starts from, fitted once.

        CalibrationError (a ValueError) names the version when its calibration scores are missing or non-finite.
        """
        init = self._initial.get((model, version))
        if init is None:
            try:
                init = thresholds.initial_state(self.threshold_cfg, calibration_scores)
            except thresholds.CalibrationError as exc:
                raise thresholds.CalibrationError(f"{model} version {version} refused: {exc}") from None
            self._initial[(model, version)] = init
        return init

    def _fresh(self, model: str, version: str, calibration_scores: np.ndarray | None) -> SourceState:
        return SourceState(self.initial(model, version, calibration_scores), incidents.IncidentState())

    async def judge(
        self,
        model: str,
        version: str,
        calibration_scores: np.ndarray | None,  # None: CalibrationError, like initial()
        sources: Sequence[str],
        scores: np.ndarray | None,
        event_keys: Sequence[str],
        sequences: Sequences | None = None,
    ) -> list[Judgement]:
        """Verdicts for `scores` (one per event, in input order); each source's events are judged in order.

        `event_keys` name the events the same way on every worker (`ids.event_key`: a redelivered event is
        known again; the incidents they open are named from them). A windowed
        model passes `sequences` instead of scores: each source's new events are scored after the history
        stored with the state they are judged against, and their rows extend it (see `Sequences`).
        """
        if sequences is not None:
            scores = np.full(len(sequences.rows), np.nan)
        x = np.asarray(scores, dtype=np.float64).reshape(-1)
        self.initial(model, version, calibration_scores)  # refuse a bad version before touching Redis
        if not (len(sources) == x.size == len(event_keys)):
            raise ValueError(f"need one source and event key per score: {len(sources)}, {x.size}, {len(event_keys)}")
        by_source: dict[str, list[int]] = {}
        for i, src in enumerate(sources):
            by_source.setdefault(src, []).append(i)
        out: list[Judgement | None] = [None] * x.size
        redis_keys = {src: self.key(model, version, src) for src in by_source}
        pending: dict[str, tuple[int, SourceState, bool]] = {}  # source -> a cache entry to start from
        for src, key in redis_keys.items():
            pending[src] = self._cache.get(key) or (0, self._fresh(model, version, calibration_scores), False)

        for attempt in range(self.max_attempts):
            computed = await self._compute(pending, by_source, x, event_keys, sequences)
            srcs = list(computed)
            keys = [redis_keys[s] for s in srcs]
            args: list[bytes | int | str] = [self._token]
            for src in srcs:
                expected, new_state, _ = computed[src]
                _, base, apart = pending[src]
                stored = apart and thresholds.same_arrays(base.threshold, new_state.threshold)
                slot = new_state.newest_slot(self.replay_batches) if new_state.batches > base.batches else ("", b"", "")
                args += [expected, *new_state.dumps_split(arrays=not stored), *slot]
            replies = await self._compare_and_set(keys, args)
            pending = {}
            for src, key, reply in zip(srcs, keys, replies, strict=True):
                _, new_state, verdicts = computed[src]
                if isinstance(reply, int):
                    self._cache[key] = (reply, new_state, True)
                    self._note_stuck((model, version, src), new_state.threshold)
                    for i, v in zip(by_source[src], verdicts, strict=True):
                        out[i] = v
                    continue
                self.conflicts += 1
                stored_version, stored, stored_arrays, slots = int(reply[0]), reply[1], reply[2], reply[3:]
                state, apart = (SourceState.loads_stored(stored, stored_arrays, slots, self.replay_batches) if stored
                                else (self._fresh(model, version, calibration_scores), False))  # fmt: skip
                self._cache[key] = pending[src] = (stored_version, state, apart)
                if attempt == self.max_attempts - 1:  # give up persisting; still answer from the freshest state
                    self.unsaved += 1
                    log.warning(
                        "threshold state of %s stayed contended for %d attempts; update not saved",
                        key,
                        self.max_attempts,
                    )
                    _, _, verdicts = (await self._compute({src: pending[src]}, by_source, x, event_keys,
                                                          sequences))[src]  # fmt: skip
                    for i, v in zip(by_source[src], verdicts, strict=True):
                        out[i] = v
            if not pending:
                break
        return out  # type: ignore[return-value]

    async def _compare_and_set(self, keys: list[str], args: list[bytes | int | str]) -> list[Any]:
        """CAS_SCRIPT over `keys` (`args`: token, then ARGS_PER_KEY per key); the replies in key order.

        One call on one server. On a cluster one call per slot, issued together; if one fails the others
        still run to their end (their writes stand: the retried batch finds its events remembered there), then it raises.
        The cluster sends the script's text (EVAL), not its hash: a promoted replica has no scripts loaded,
        and a NOSCRIPT reply would cost each call a second round trip.
        """
        if not self.slot_groups:
            self.round_trips += 1
            return await self._cas(keys=keys, args=args)
        cluster = self.redis
        assert isinstance(cluster, RedisCluster)
        # Calls issued together on a client that must (re)read the slot map break each other's new connections
        # (redis-py 8.1: AttributeError on a closed writer), so the map is read first, once.
        await cluster.initialize()
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(i)
        self.round_trips += len(by_slot)
        token = args[0]
        calls = [
            cluster.eval(
                self._script,
                len(idx),
                *[keys[i] for i in idx],
                token,
                *chain(*(args[ARGS_PER_KEY * i + 1 : ARGS_PER_KEY * (i + 1) + 1] for i in idx)),
            )
            for idx in by_slot.values()
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        replies: list[Any] = [None] * len(keys)
        for idx, result in zip(by_slot.values(), results, strict=True):
            if isinstance(result, BaseException):
                raise result
            for i, reply in zip(idx, result, strict=True):
                replies[i] = reply
        return replies

    async def _compute(
        self,
        pending: dict[str, tuple[int, SourceState, bool]],
        by_source: dict[str, list[int]],
        x: np.ndarray,
        event_keys: Sequence[str],
        sequences: Sequences | None,
    ) -> dict[str, tuple[int, SourceState, list[Judgement]]]:
        """Each pending source's (expected version, next state, verdicts), judged from the state it would
        compare-and-set from; a windowed model's new events are scored first, after that state's history."""
        carried: dict[str, tuple[History, int]] = {}
        if sequences is not None:
            x, carried = await self._score_fresh(pending, by_source, x, event_keys, sequences)
        batches = []
        for src, (_, state, _) in pending.items():
            idx = by_source[src]
            history, warmup = carried.get(src, (None, 0))
            batches.append(SourceBatch(state, src, x[idx], [event_keys[i] for i in idx], history, warmup))
        judged = self._judge_sources(batches)
        return {src: (entry[0], *j) for (src, entry), j in zip(pending.items(), judged, strict=True)}

    async def _score_fresh(
        self,
        pending: dict[str, tuple[int, SourceState, bool]],
        by_source: dict[str, list[int]],
        x: np.ndarray,
        event_keys: Sequence[str],
        seq: Sequences,
    ) -> tuple[np.ndarray, dict[str, tuple[History, int]]]:
        """Scores of the events each state has not judged yet, after that state's history, in one scoring call;
        and each such source's history after them. Events already judged keep NaN (their verdicts are replayed)."""
        todo: list[tuple[str, list[int], np.ndarray | None]] = []
        for src, (_, state, _) in pending.items():
            idx = by_source[src]
            judged = state.judged(src, [event_keys[i] for i in idx]) if state.recent else {}
            fresh = [i for i in idx if event_keys[i] not in judged]
            if fresh:
                todo.append((src, fresh, None if state.history is None else state.history.rows()))
        if not todo:
            return x, {}
        results = await seq.score([(history, seq.rows[fresh]) for _, fresh, history in todo])
        seq.calls += 1
        x = x.copy()
        carried: dict[str, tuple[History, int]] = {}
        for (src, fresh, history), (scores, after) in zip(todo, results, strict=True):
            x[fresh] = scores
            carried[src] = History.of(after), max(0, seq.window - 1 - (0 if history is None else len(history)))
            seq.followed[src], seq.fresh[src] = history, fresh
        return x, carried

    def _note_stuck(self, where: tuple[str, str, str], state: thresholds.ThresholdState) -> None:
        if isinstance(state, thresholds.SpotState) and state.stuck:  # only SPOT states track it
            if where not in self.stuck:
                log.warning(
                    "threshold of %s/%s source %s is stuck: alarm rate %.3g > %g x risk %g for %d events",
                    *where, state.alarm_rate, self.threshold_cfg.stuck_factor, self.threshold_cfg.risk,
                    state.high_for,
                )  # fmt: skip
            self.stuck[where] = state.alarm_rate
        else:
            self.stuck.pop(where, None)

    def _judge_source(
        self,
        state: SourceState,
        source: str,
        scores: np.ndarray,
        event_keys: list[str],
        history: History | None = None,
        warmup: int = 0,
    ) -> tuple[SourceState, list[Judgement]]:
        """`_judge_sources` of one source's events."""
        return self._judge_sources([SourceBatch(state, source, scores, event_keys, history, warmup)])[0]

    def _judge_sources(self, batches: list[SourceBatch]) -> list[tuple[SourceState, list[Judgement]]]:
        """Verdicts for each source's events, and its next state. Events a source remembers judging get those
        verdicts again and are not absorbed twice; the others are judged in order after them, every source's in
        one pass (`thresholds.judge_many`)."""
        remembered = [b.state.judged(b.source, b.keys) if b.state.recent else {} for b in batches]
        fresh = [
            [i for i, k in enumerate(b.keys) if k not in judged] if judged else range(len(b.keys))
            for b, judged in zip(batches, remembered, strict=True)
        ]
        todo = [b.only(f) if len(f) < len(b.keys) else b for b, f in zip(batches, fresh, strict=True) if f]
        new = iter(self._judge_new(todo))
        out = []
        for b, judged, f in zip(batches, remembered, fresh, strict=True):
            if not f:
                out.append((b.state, [judged[k] for k in b.keys]))
                continue
            state, verdicts = next(new)
            if judged:
                merged: list[Judgement] = [judged.get(k) for k in b.keys]  # type: ignore[misc]
                for i, v in zip(f, verdicts, strict=True):
                    merged[i] = v
                verdicts = merged
            out.append((state, verdicts))
        return out

    def _judge_new(self, batches: list[SourceBatch]) -> list[tuple[SourceState, list[Judgement]]]:
        """Judge events not judged before, each source's after its state. The first `warmup` of a source (a
        windowed model's padded windows: a repeated row looks like a stuck sensor) are never anomalous and do not
        teach the threshold; from the event that opens an incident on, nothing above t teaches it either."""
        if not batches:
            return []
        learns = [b.learn() for b in batches]
        judged = thresholds.judge_many(self.threshold_cfg, [b.state.threshold for b in batches],
                                       [b.scores for b in batches], learns)  # fmt: skip

        def incident_steps(b: SourceBatch, anomalous: np.ndarray) -> tuple[list[bool], list, incidents.IncidentState]:
            flags = b.flags(anomalous)
            return (flags, *incidents.step(self.incident_cfg, b.state.incident, b.source, flags, b.keys))

        steps = []
        for i, (b, learn) in enumerate(zip(batches, learns, strict=True)):
            step = incident_steps(b, judged[i][1])
            events = [e for _, e in step[1]]
            if b.state.incident.open_id is None and "opened" in events:  # judge again, learning nothing from then on
                learn = (np.arange(b.scores.size) < events.index("opened")) & b.settled()  # (warm-up taught nothing)
                judged[i] = thresholds.judge(self.threshold_cfg, b.state.threshold, b.scores, learn)
                step = incident_steps(b, judged[i][1])
            steps.append(step)
        sev = severities(np.concatenate([b.scores for b in batches]), np.concatenate([j[0] for j in judged])).tolist()
        bounds = np.cumsum([0] + [b.scores.size for b in batches]).tolist()
        return [
            self._judged_state(b, j, sev[lo:hi], *step)
            for b, j, lo, hi, step in zip(batches, judged, bounds[:-1], bounds[1:], steps, strict=True)
        ]

    def _judged_state(
        self,
        b: SourceBatch,
        thr_judged: thresholds.Judged,
        sev: list[float],
        flags: list[bool],
        steps: list,
        inc_state: incidents.IncidentState,
    ) -> tuple[SourceState, list[Judgement]]:
        """A source's verdicts and next state from its threshold and incident judgements and severities."""
        thr, _, thr_state = thr_judged
        inc_ids, inc_events = zip(*steps, strict=True) if steps else ((), ())
        n, stuck = b.scores.size, bool(getattr(thr_state, "stuck", False))
        scores, thrs = b.scores.tolist(), thr.tolist()
        rows = zip([b.source] * n, scores, thrs, flags, sev, inc_ids, inc_events, [stuck] * n, strict=True)
        verdicts = list(map(_new_judgement, rows))
        judged = JudgedBatch(
            tuple(b.keys), tuple(scores), tuple(thrs), tuple(flags), inc_ids, inc_events, stuck, b.state.batches
        )
        recent = (*b.state.recent, judged)[-self.replay_batches :]
        history = b.state.history if b.history is None else b.history
        return SourceState(thr_state, inc_state, recent, history, b.state.batches + 1), verdicts

    async def states(self, model: str, version: str, sources: Sequence[str]) -> dict[str, SourceState]:
        """The stored state of each source that has one (one round trip; per master, together, on a cluster);
        refreshes the local cache."""
        keys = [self.key(model, version, s) for s in sources]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)  # the ring slots too, whatever ring size wrote them
            rows = await pipe.execute()
        self.round_trips += 1
        found: dict[str, SourceState] = {}
        for src, key, fields in zip(sources, keys, rows, strict=True):
            v, s = fields.get(b"v"), fields.get(b"s")
            if v is not None and s is not None:
                slots = [value for name, value in fields.items() if RING_FIELD.fullmatch(name)]
                found[src], apart = SourceState.loads_stored(s, fields.get(b"a"), slots, self.replay_batches)
                self._cache[key] = (int(v), found[src], apart)
        return found

    async def thresholds(self, model: str, version: str, sources: Sequence[str]) -> dict[str, float]:
        """Current alert threshold of each source that has a stored state (for metrics)."""
        found = await self.states(model, version, sources)
        return {src: thresholds.current_threshold(self.threshold_cfg, st.threshold) for src, st in found.items()}

    async def clear(self, model: str | None = None) -> int:
        """Delete stored states (all models, or one) under this prefix and forget the cache; returns the count.

        On a cluster the client scans every master and deletes slot by slot."""
        tagged = f"{{{model}:g*" if self.slot_groups else f"{model}:*"
        pattern = f"{self.key_prefix}:thr:{tagged}" if model else f"{self.key_prefix}:thr:*"
        keys = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
        if keys:
            await self.redis.delete(*keys)
        self._cache.clear()
        self._initial.clear()
        return len(keys)
