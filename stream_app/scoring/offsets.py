"""Offset bookkeeping for at-least-once consumption, as a pure object (no Kafka, no asyncio).

The consume loop fetches batches that span partitions, scores them, and later learns that the broker
acknowledged (or refused) their outputs, not necessarily in fetch order. The ledger answers three questions:

1. What may be committed? Per partition, the end of the longest prefix of fetched ranges whose batches are all
   acknowledged: a later batch acked first waits for the earlier one (commits stay in order, nothing skipped).
2. Where to rewind after a failure? Per partition the failed batch touched, the oldest offset not yet acked;
   every other in-flight range of that partition is dropped (it will be fetched again), other partitions
   keep going. Until the loop confirms the seek (`rewound`), ranges of that partition are not tracked: records
   fetched before the seek must not advance its commit position past the gap.
3. What to forget on a rebalance? A revoked partition's ranges and positions; a partition that is not assigned
   is never offered for a commit or a seek, so a late ack after a rebalance cannot commit someone else's work.

Modelled on quix-streams' `checkpointing/`: one object owns the offsets, the loop only performs the steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

TP = Hashable  # aiokafka's TopicPartition in the worker; any hashable in tests


@dataclass
class _Range:
    batch: int
    start: int
    end: int
    acked: bool = False


class OffsetLedger:
    """In-order commit positions, rewinds and rebalance bookkeeping for in-flight batches.

    >>> ledger = OffsetLedger()
    >>> ledger.assign(["t/0"])
    >>> first, second = ledger.track({"t/0": (0, 10)}), ledger.track({"t/0": (10, 20)})
    >>> ledger.ack(second); ledger.committable()
    {}
    >>> ledger.ack(first); ledger.committable()
    {'t/0': 20}
    >>> ledger.committed({"t/0": 20}); ledger.committable()
    {}
    """

    def __init__(self) -> None:
        self._assigned: set[TP] = set()
        self._pending: dict[TP, deque[_Range]] = {}  # fetched, not yet committable, in fetch order
        self._done: dict[TP, int] = {}  # end of the acknowledged prefix: the next offset to commit
        self._committed: dict[TP, int] = {}  # what the broker has from us
        self._seen: dict[TP, int] = {}  # highest end ever tracked, to tell redeliveries from new events
        self._batches: dict[int, set[TP]] = {}  # batch -> partitions where it still has a pending range
        self._rewinding: dict[TP, int] = {}  # partition -> offset to seek to, until the loop has done it
        self._next_batch = 0

    # ---- assignment ---------------------------------------------------------------------------------
    @property
    def assigned(self) -> frozenset[TP]:
        return frozenset(self._assigned)

    def assign(self, tps: Iterable[TP]) -> None:
        """Partitions the group gave us; a new owner starts from the committed offset the broker keeps."""
        self._assigned |= set(tps)

    def revoke(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Forget `tps`; returns their acknowledged positions not yet committed (commit them before the
        rebalance completes, or the next owner redoes that work)."""
        final: dict[TP, int] = {}
        for tp in set(tps) & self._assigned:
            done = self._done.get(tp)
            if done is not None and done != self._committed.get(tp):
                final[tp] = done
            for r in self._pending.pop(tp, ()):
                self._drop(r.batch, tp)
            self._assigned.discard(tp)
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            self._seen.pop(tp, None)
            self._rewinding.pop(tp, None)
        return final

    # ---- batches ------------------------------------------------------------------------------------
    def redelivered(self, offsets: Mapping[TP, tuple[int, int]]) -> int:
        """How many offsets of [start, end) ranges this ledger has already tracked (fetched again after a
        rewind), so a counter of events can leave them out."""
        return sum(max(0, min(end, self._seen[tp]) - start) for tp, (start, end) in offsets.items() if tp in self._seen)

    def track(self, offsets: Mapping[TP, tuple[int, int]]) -> int:
        """Record a fetched batch ([start, end) per partition); returns its id. Unassigned partitions (records
        fetched just before a revoke) and partitions waiting for their rewind are ignored: never committed."""
        batch = self._next_batch
        self._next_batch += 1
        held = set()
        for tp, (start, end) in offsets.items():
            if tp not in self._assigned or tp in self._rewinding:
                continue
            if end <= start:
                raise ValueError(f"offset range of {tp} must be [start, end) with end > start, got [{start}, {end})")
            self._pending.setdefault(tp, deque()).append(_Range(batch, start, end))
            self._seen[tp] = max(self._seen.get(tp, end), end)
            held.add(tp)
        if held:
            self._batches[batch] = held
        return batch

    def ack(self, batch: int) -> None:
        """The batch's outputs are acknowledged: its ranges count toward the commit positions. A batch whose
        ranges were dropped by a rewind or a revoke is ignored."""
        for tp in self._batches.get(batch, set()).copy():
            queue = self._pending[tp]
            for r in queue:
                if r.batch == batch:
                    r.acked = True
            while queue and queue[0].acked:
                r = queue.popleft()
                self._done[tp] = r.end
                self._drop(r.batch, tp)

    def fail(self, batch: int) -> dict[TP, int]:
        """The batch was not scored or its outputs were refused: returns, per partition it still holds, the
        offset to seek to (the oldest unacked one); all in-flight ranges of those partitions are dropped.
        The same positions stay in `rewinds()` until `rewound` confirms each seek."""
        rewinds: dict[TP, int] = {}
        for tp in self._batches.get(batch, set()).copy():
            queue = self._pending.pop(tp)
            rewinds[tp] = queue[0].start
            for r in queue:
                self._drop(r.batch, tp)
        self._rewinding.update(rewinds)
        return rewinds

    def rewinds(self) -> dict[TP, int]:
        """Seeks still to perform (assigned partitions only)."""
        return dict(self._rewinding)

    def rewound(self, tp: TP) -> None:
        """The consumer now fetches `tp` from its rewind offset: its ranges are tracked again."""
        self._rewinding.pop(tp, None)

    def _drop(self, batch: int, tp: TP) -> None:
        held = self._batches.get(batch)
        if held is not None:
            held.discard(tp)
            if not held:
                del self._batches[batch]

    # ---- commits ------------------------------------------------------------------------------------
    def committable(self) -> dict[TP, int]:
        """Positions of assigned partitions that advanced since the last confirmed commit."""
        return {tp: done for tp, done in self._done.items() if tp in self._assigned and done != self._committed.get(tp)}

    def committed(self, positions: Mapping[TP, int]) -> None:
        """The broker accepted these positions (partitions revoked meanwhile are ignored)."""
        for tp, offset in positions.items():
            if tp in self._assigned:
                self._committed[tp] = offset

    # ---- inspection ---------------------------------------------------------------------------------
    def in_flight(self, tps: Iterable[TP] | None = None) -> set[int]:
        """Batches with ranges not yet acknowledged (only those touching `tps` when given)."""
        if tps is None:
            return set(self._batches)
        wanted = set(tps)
        return {b for b, held in self._batches.items() if held & wanted}

    def low_watermark(self, tp: TP) -> int | None:
        """The first offset of `tp` not yet acknowledged, as far as this ledger knows (None: nothing tracked)."""
        queue = self._pending.get(tp)
        if queue:
            return queue[0].start
        if tp in self._rewinding:
            return self._rewinding[tp]
        return self._done.get(tp)
