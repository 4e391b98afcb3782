"""The retraining agent (`linewatch retrain`): refit models on recent normal traffic, validate, publish, promote.

One cycle for a model (`RetrainAgent.run_cycle`):

1. load the production version (hashes verified): its kind, config and input data kind;
2. read the recent window of its input topic, judged by its verdicts (`training_window.read_window`);
3. fit a candidate of the same kind and config in a thread (the event loop keeps serving triggers), with a
   progress bar in a terminal and log lines otherwise;
4. decide (`decision.decide`) on the held-back normal slice and the regression sets (confirmed incident
   events, kept per model by `regression.RegressionSet`, and synthetic canaries), candidate vs production;
   if production changed during the fit, the candidate is validated again against the new production;
5. publish the candidate with the window, counts, fit metrics, decision, reason, parent version and the
   version it was validated against in its manifest (rejected ones too when `keep_rejected`), then promote
   it with a compare-and-set on the production pointer and announce it on model-updates when it passed and
   `auto_promote` is on. If production changed between validation and promotion, it is not promoted.

Nothing but the regression set reaches the state dir or the registry before step 5, so a failed or
cancelled fit leaves the registry unchanged. Triggers:
per-model schedules (cron via croniter, or an interval), control-topic messages
`{"action": "retrain", "model": NAME, "requested_at": ts}` and the CLI (`--once`, `trigger`).
A model's cycles never overlap: a trigger for a model already queued or running is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from stream_app.ops.backoff import Backoff
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, offset_ranges, send_json
from stream_app.registry.announcements import (
    ControlRejected,
    RetrainRequest,
    announce_version,
    checked_name,
    load_json_object,
    validated,
)
from stream_app.registry.versions import ModelVersion, PromotionConflict, Registry
from stream_app.retraining.canaries import canaries
from stream_app.retraining.decision import CONFIRMED, Decision, calibrated_threshold, decide
from stream_app.retraining.feedback import Feedback, operator_feedback, with_events
from stream_app.retraining.fitting import fit_options, fit_summary
from stream_app.retraining.regression import RegressionSet
from stream_app.retraining.window import TrainingWindow, read_window
from stream_app.settings import RetrainSchedule, Settings
from stream_app.wire.kinds import data_kind

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pure helpers


def next_run(schedule: RetrainSchedule, after: float) -> float:
    """Epoch seconds of the schedule's next run strictly after `after` (cron in UTC, or a fixed interval).

    >>> next_run(RetrainSchedule(model="m", cron="0 * * * *"), 30.0), next_run(RetrainSchedule(model="m", interval_s=5), 1.0)
    (3600.0, 6.0)
    """
    if schedule.cron:
        from croniter import croniter

        return float(croniter(schedule.cron, datetime.fromtimestamp(after, UTC)).get_next(float))
    if schedule.interval_s:
        return after + schedule.interval_s
    raise ValueError(f"schedule for {schedule.model!r} has neither cron nor interval_s")


def control_message(model: str, requested_at: float | None = None) -> dict[str, Any]:
    return {"action": "retrain", "model": model, "requested_at": time.time() if requested_at is None else requested_at}


def parse_control(value: bytes | None, now: float, max_age_s: float) -> str:
    """The model a control message asks to retrain; ControlRejected (a ValueError) says why it is ignored.

    The reason is one of announcements.CONTROL_REJECT_REASONS (`malformed_json`, `bad_schema`,
    `unsupported_action`, `invalid_name`, `stale`); a request dated more than `max_age_s` ahead is stale
    too, or it would fire again on every restart.

    >>> parse_control(b'{"action": "retrain", "model": "press", "requested_at": 100.0}', now=110.0, max_age_s=300)
    'press'
    """
    msg = load_json_object(value)
    if isinstance(action := msg.get("action"), str) and action != "retrain":
        raise ControlRejected("unsupported_action", f"not a retrain request: action {action!r}"[:200])
    request = validated(RetrainRequest, msg)
    model = checked_name("model name", request.model)
    if abs(now - request.requested_at) > max_age_s:
        raise ControlRejected(
            "stale",
            f"retrain request for {model} is older than {max_age_s:.0f} s, or dated ahead "
            f"(requested_at={request.requested_at}, now={now:.0f})",
        )
    return model


async def send_trigger(settings: Settings, model: str) -> dict[str, Any]:
    """Produce an on-demand retrain request on the control topic (what `linewatch retrain trigger` does)."""
    message = control_message(model)
    await send_json(settings, settings.topics.control, model, message)
    return message


def new_candidate(production: Any, device: str | None = None) -> Any:
    """An unfitted scorer of the production version's kind and config.

    Autoencoders start from fresh weights (seeded). Other scorers (Transformaly) start from a copy of the
    production scorer: its frozen backbone weights live in the registry, and a fresh build would need a
    pretrained download; fitting refits the densities and continues training the students.
    """
    from models.rvae import RVAEScorer

    if isinstance(production, RVAEScorer):
        return RVAEScorer(**asdict(production.config), feature_names=production.feature_names, device=device)
    return copy.deepcopy(production)


def _scores(scorer: Any, data: np.ndarray) -> np.ndarray:
    return scorer.score(data) if len(data) else np.zeros(0, np.float32)


def regression_sets(
    settings: Settings, kind: str, confirmed: np.ndarray | None, holdout: np.ndarray, in_order: bool = False
) -> dict[str, np.ndarray]:
    """The events every candidate must keep flagging: confirmed incident events and canaries from the holdout
    (`in_order` for a model with temporal context: runs of consecutive rows)."""
    cfg = settings.retrain
    sets = {CONFIRMED: confirmed if confirmed is not None else holdout[:0]}
    return sets | canaries(kind, holdout, k=cfg.canary_sigma, n=cfg.canary_events, in_order=in_order)


def validate(
    settings: Settings,
    candidate: Any,
    current: Any,
    window: TrainingWindow,
    candidate_holdout: np.ndarray,
    regression: dict[str, np.ndarray] | None = None,
) -> Decision:
    """Score the held-back events and the regression sets with both versions and apply `decision.decide`.

    `candidate_holdout` is the candidate's scores of `window.holdout`, which the caller reuses for calibration.
    `regression` defaults to the window's incident events (as confirmed) and canaries from its holdout.
    """
    thr = settings.thresholds
    try:
        cand_t = calibrated_threshold(thr, candidate.calibration_scores)
    except ValueError as exc:
        return Decision("rejected", f"candidate has no usable calibration: {exc}")
    cur_t = None
    with contextlib.suppress(ValueError):  # a version without calibration scores cannot be compared with
        cur_t = calibrated_threshold(thr, getattr(current, "calibration_scores", None))
    compare = cur_t is not None
    if regression is None:
        in_order = getattr(candidate, "window", 1) > 1
        regression = regression_sets(settings, window.kind, window.incidents, window.holdout, in_order)
    scored = {
        name: (_scores(candidate, events), _scores(current, events) if compare else None)
        for name, events in regression.items()
    }
    return decide(
        settings.retrain,
        cand_t,
        candidate_holdout,
        scored,
        cur_t,
        _scores(current, window.holdout) if compare else None,
    )


# ----------------------------------------------------------------------------- the agent


@dataclass
class CycleResult:
    """What one cycle did. `decision`: promoted | passed (published, not promoted) | rejected | skipped | failed."""

    model: str
    decision: str
    reason: str
    trigger: str
    parent: str | None = None
    version: str | None = None  # the published candidate, if any
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    announced: dict[str, Any] | None = None
    seconds: float = 0.0


class RetrainAgent:
    """Runs retraining cycles on triggers; see the module docstring.

    >>> import tempfile
    >>> agent = RetrainAgent(Settings(registry_dir=tempfile.mkdtemp()))
    >>> agent.registry.models(), agent.progress in (True, False)
    ([], True)
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        device: str | None = None,
        progress: bool | None = None,
        heartbeat_s: float = 15.0,
    ):
        self.settings = settings
        self.registry = registry or Registry(settings.registry_dir)
        self.device = device or settings.device
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.heartbeat_s = heartbeat_s
        self.results: list[CycleResult] = []
        self._pending: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] | None = None

    # ------------------------------------------------------------------ one cycle

    async def run_cycle(self, model: str, trigger: str = "manual", guard: bool | None = None) -> CycleResult:
        """Read, fit, validate, publish and maybe promote; LookupError if `model` has no production version. Any
        other error ends the cycle as `failed`, with production untouched unless the promotion had happened."""
        started = time.monotonic()
        prod = self.registry.production(model)  # LookupError: nothing to retrain from
        try:
            return await self._cycle(model, trigger, guard, prod, started)
        except Exception as exc:
            log.exception("retrain %s: cycle failed", model)
            result = CycleResult(model, "failed", f"{type(exc).__name__}: {exc}", trigger, parent=prod.version)
            return self._done(result, started)

    async def _cycle(
        self, model: str, trigger: str, guard: bool | None, prod: ModelVersion, started: float
    ) -> CycleResult:
        cfg = self.settings.retrain
        log.info("retrain %s (trigger: %s): production version %s", model, trigger, prod.version)
        _, current = await asyncio.to_thread(self.registry.load, model, prod.version, self.device)
        kind = data_kind(current.data_kind)
        topic = kind.input_topic(self.settings.topics)
        sequences = getattr(current, "window", 1) > 1  # temporal context: each source's rows in order
        window = await read_window(self.settings, topic, kind.name, model, guard=guard, sequences=sequences)
        result = CycleResult(model, "skipped", "", trigger, parent=prod.version, counts=window.counts)
        log.info("retrain %s: window of %s %s, counts %s, bad %s", model, topic,
                 _span(window), window.counts, window.bad or "none")  # fmt: skip
        if window.n_clean < cfg.min_samples:
            result.reason = f"{window.n_clean} clean events in the window < min_samples {cfg.min_samples}"
            return self._done(result, started)

        feedback = await operator_feedback(self.settings, model, kind.name)
        train = with_events(window.train, feedback.false_alarms)  # operators said these are normal
        candidate = new_candidate(current, self.device)
        try:
            fit_started = time.monotonic()
            history = await self._fit(model, candidate, train)
        except asyncio.CancelledError:
            log.warning("retrain %s: cancelled during the fit; registry unchanged", model)
            raise
        except Exception as exc:
            log.exception("retrain %s: fit failed; registry unchanged", model)
            result.decision, result.reason = "failed", f"fit failed: {exc}"
            return self._done(result, started)
        fit = fit_summary(history, time.monotonic() - fit_started)

        held = await asyncio.to_thread(_scores, candidate, window.holdout)
        confirmed, stored = await asyncio.to_thread(self._confirmed, model, window, feedback)
        sets = regression_sets(self.settings, kind.name, confirmed, window.holdout, in_order=sequences)
        against, decision = (
            prod.version,
            await asyncio.to_thread(validate, self.settings, candidate, current, window, held, sets),
        )
        now = self.registry.production(model).version
        if now != against:  # production changed during the fit: validate against what serves now
            log.warning("retrain %s: production moved %s -> %s during the fit; validating again", model, against, now)
            _, current = await asyncio.to_thread(self.registry.load, model, now, self.device)
            against, decision = (
                now,
                await asyncio.to_thread(validate, self.settings, candidate, current, window, held, sets),
            )
        result.metrics = {"fit": fit, "validation": decision.metrics, "regression_set": stored}
        result.decision, result.reason = decision.decision, decision.reason
        if not decision.passed and not cfg.keep_rejected:
            return self._done(result, started)
        extra = {
            "parent": prod.version,
            "trained_by": "retrain-agent",
            "trigger": trigger,
            "training_window": window.manifest(),
            "metrics": result.metrics,
            "validation": {
                **decision.to_dict(), "validated_against": against, "decided_at": datetime.now(UTC).isoformat()
            },
        }  # fmt: skip
        mv = await asyncio.to_thread(self.registry.publish, model, candidate, extra)
        result.version = mv.version
        if decision.passed and cfg.auto_promote:
            try:
                await asyncio.to_thread(self.registry.promote, model, mv.version, False, against)
            except PromotionConflict as exc:  # production moved again after validation: never promote blind
                result.reason += f"; not promoted: {exc}"
                return self._done(result, started)
            result.decision = "promoted"
            result.announced = await self._announce(result, mv)
        return self._done(result, started)

    async def _announce(self, result: CycleResult, mv: ModelVersion) -> dict[str, Any] | None:
        """Announce a promoted version, retried with backoff; if the broker stays away the promotion stands (it
        was validated and compare-and-set) and workers find it at their next check of the production pointer."""
        backoff = Backoff(self.settings.recovery.retry_base_s, self.settings.recovery.retry_max_s)
        for attempt in range(self.settings.retrain.announce_attempts):
            if attempt:
                await asyncio.sleep(backoff.next_delay())
            try:
                return await announce_version(self.settings, self.registry, mv)
            except Exception as exc:
                failure = exc
        log.error("retrain %s: version %s promoted but not announced: %s", result.model, mv.version, failure)
        result.reason += (
            f"; not announced ({type(failure).__name__}: {failure}): workers serve it at their next pointer check"
        )
        return None

    async def _fit(self, model: str, candidate: Any, data: np.ndarray) -> dict[str, Any]:
        """Fit in a worker thread; without a terminal, a log line every `heartbeat_s` says it is alive."""
        epochs = self.settings.retrain.epochs
        log.info("retrain %s: fitting %s on %d events, up to %d epochs", model, type(candidate).__name__,
                 len(data), epochs)  # fmt: skip
        options = fit_options(candidate, epochs=epochs, progress=self.progress)
        fit = asyncio.ensure_future(asyncio.to_thread(candidate.fit, data, **options))
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({fit}, timeout=self.heartbeat_s)
                if done:
                    return fit.result()
                if not self.progress:
                    log.info("retrain %s: still fitting (%.0f s)", model, time.monotonic() - started)
        finally:
            # The thread cannot be interrupted; its result is simply never published.
            fit.cancel()

    def _confirmed(
        self, model: str, window: TrainingWindow, feedback: Feedback
    ) -> tuple[np.ndarray | None, dict[str, int]]:
        """Add the window's closed incidents and the operators' confirmed defects to the model's regression set,
        less what operators called false alarms; the whole set, and its counts."""
        rs = RegressionSet(self.settings.state_dir, model, self.settings.retrain.regression_max_events)
        shape = tuple(window.holdout.shape[1:]) if len(window.holdout) else None
        closed = [(e, i) for e, i, c in zip(window.incidents, window.incident_ids, window.closed.tolist(), strict=True)
                  if c]  # fmt: skip
        labelled = [(e, f"label:{i}") for e, i in zip(feedback.confirmed, feedback.confirmed_ids, strict=True)]
        if shape is None and (closed or labelled):
            shape = (closed + labelled)[0][0].shape
        new = [(e, i) for e, i in closed + labelled if e.shape == shape]
        update = rs.update(
            np.stack([e for e, _ in new]) if new else None, [i for _, i in new], remove=feedback.dismissed, shape=shape
        )
        counts = {"events": 0 if update.events is None else len(update.events), "incidents": len(set(update.ids))}
        return update.events, counts | {"added": update.added, "dismissed": update.removed}

    def _done(self, result: CycleResult, started: float) -> CycleResult:
        result.seconds = time.monotonic() - started
        level = logging.WARNING if result.decision in ("rejected", "failed") else logging.INFO
        log.log(level, "retrain %s: %s (%s)%s in %.1f s", result.model, result.decision, result.reason,
                f", version {result.version} (parent {result.parent})" if result.version else "",
                result.seconds)  # fmt: skip
        self.results.append(result)
        return result

    # ------------------------------------------------------------------ triggers

    def request(self, model: str, trigger: str) -> bool:
        """Queue a cycle unless one for `model` is already queued or running."""
        if self._queue is None:
            raise RuntimeError("the agent is not running")
        if model in self._pending:
            log.info("retrain %s: %s ignored, a cycle is already queued or running", model, trigger)
            return False
        self._pending.add(model)
        self._queue.put_nowait((model, trigger))
        return True

    async def run(self, models: Sequence[str] | None = None) -> None:
        """Serve schedules and control-topic triggers until cancelled (for `models`, default all)."""
        self._queue = asyncio.Queue()
        if threads := self.settings.retrain.threads:  # leave the other cores to the workers on this machine
            import torch

            torch.set_num_threads(threads)
        schedules = [s for s in self.settings.retrain.schedules if models is None or s.model in models]
        log.info("retraining agent: %d schedule(s), control topic %s", len(schedules), self.settings.topics.control)
        try:
            async with asyncio.TaskGroup() as tg:
                for schedule in schedules:
                    tg.create_task(self._follow_schedule(schedule))
                tg.create_task(self._follow_control(models))
                tg.create_task(self._serve_queue())
        finally:
            self._queue = None

    async def _serve_queue(self) -> None:
        assert self._queue is not None
        while True:
            model, trigger = await self._queue.get()
            try:
                await self.run_cycle(model, trigger)
            except LookupError as exc:
                log.error("retrain %s: %s", model, exc)
            except Exception:
                log.exception("retrain %s: cycle failed; the agent keeps running", model)
            finally:
                self._pending.discard(model)

    async def _follow_schedule(self, schedule: RetrainSchedule) -> None:
        label = f"cron {schedule.cron}" if schedule.cron else f"every {schedule.interval_s:g} s"
        while True:
            at = next_run(schedule, time.time())
            log.info("retrain %s: next scheduled run at %s (%s)", schedule.model,
                     datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"), label)  # fmt: skip
            await asyncio.sleep(max(0.0, at - time.time()))
            self.request(schedule.model, f"schedule ({label})")

    async def _follow_control(self, models: Sequence[str] | None) -> None:
        """Control-topic requests from `control_max_age_s` ago onwards (a just-sent trigger is not missed)."""
        s = self.settings
        await ensure_topics(s, [s.topics.control])
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **aiokafka_kwargs(s.kafka))
        await consumer.start()
        try:
            while not (
                ranges := await offset_ranges(
                    consumer, s.topics.control, int((time.time() - s.retrain.control_max_age_s) * 1000), None
                )
            ):
                await asyncio.sleep(0.5)  # the topic is not in the cluster's metadata yet
            consumer.assign(list(ranges))
            for tp, (start, _) in ranges.items():
                consumer.seek(tp, start)
            async for msg in consumer:
                try:
                    model = parse_control(msg.value, time.time(), s.retrain.control_max_age_s)
                except ValueError as exc:
                    log.info("control message at %d/%d ignored: %s", msg.partition, msg.offset, exc)
                    continue
                if models is not None and model not in models:
                    log.info("control request for %s ignored: this agent serves %s", model, list(models))
                    continue
                self.request(model, "control topic")
        finally:
            await consumer.stop()


def _span(window: TrainingWindow) -> str:
    if window.start_ts is None:
        return "(empty)"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    start, end = (datetime.fromtimestamp(t, UTC).strftime(fmt) for t in (window.start_ts, window.end_ts or 0))
    return f"{start}..{end}"
