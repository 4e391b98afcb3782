"""OffsetLedger: in-order commits, rewinds and rebalances without Kafka."""

from __future__ import annotations

import pytest

from stream_app.scoring.offsets import OffsetLedger

A, B, C = "t/0", "t/1", "t/2"


def ledger_with(*tps: str) -> OffsetLedger:
    ledger = OffsetLedger()
    ledger.assign(tps)
    return ledger


def test_acks_out_of_order_commit_only_the_acknowledged_prefix():
    ledger = ledger_with(A)
    first, second, third = (ledger.track({A: (s, s + 10)}) for s in (0, 10, 20))
    ledger.ack(third)
    ledger.ack(second)
    assert ledger.committable() == {}
    ledger.ack(first)
    assert ledger.committable() == {A: 30}


def test_partitions_advance_independently():
    ledger = ledger_with(A, B)
    both = ledger.track({A: (0, 5), B: (0, 7)})
    only_b = ledger.track({B: (7, 9)})
    ledger.ack(only_b)
    assert ledger.committable() == {}
    ledger.ack(both)
    assert ledger.committable() == {A: 5, B: 9}


def test_a_confirmed_commit_is_not_offered_again():
    ledger = ledger_with(A)
    ledger.ack(ledger.track({A: (0, 4)}))
    ledger.committed(ledger.committable())
    assert ledger.committable() == {}
    ledger.ack(ledger.track({A: (4, 6)}))
    assert ledger.committable() == {A: 6}


def test_failure_rewinds_each_partition_to_its_oldest_unacked_offset():
    ledger = ledger_with(A, B, C)
    ledger.ack(ledger.track({A: (0, 10)}))
    older = ledger.track({A: (10, 20), B: (0, 3)})
    failed = ledger.track({A: (20, 30), B: (3, 6)})
    elsewhere = ledger.track({C: (0, 5)})
    assert ledger.fail(failed) == {A: 10, B: 0}
    ledger.ack(older)  # dropped by the rewind: it will be fetched and scored again
    ledger.ack(elsewhere)  # an untouched partition keeps its progress
    assert ledger.committable() == {A: 10, C: 5}
    assert ledger.in_flight() == set()


def test_a_batch_whose_ranges_were_rewound_rewinds_nothing_when_it_fails_later():
    ledger = ledger_with(A)
    stale = ledger.track({A: (0, 10)})
    assert ledger.fail(ledger.track({A: (10, 20)})) == {A: 0}
    ledger.rewound(A)
    refetched = ledger.track({A: (0, 20)})
    assert ledger.fail(stale) == {}
    ledger.ack(refetched)
    assert ledger.committable() == {A: 20}


def test_revoked_partitions_are_dropped_and_hand_over_what_was_acked():
    ledger = ledger_with(A, B)
    ledger.ack(ledger.track({A: (0, 10), B: (0, 10)}))
    in_flight = ledger.track({A: (10, 20), B: (10, 20)})
    assert ledger.revoke([A]) == {A: 10}
    assert ledger.in_flight([A]) == set() and ledger.in_flight([B]) == {in_flight}
    ledger.ack(in_flight)
    assert ledger.committable() == {B: 20}
    assert ledger.assigned == {B}


def test_a_partition_not_assigned_is_never_committed_or_rewound():
    ledger = ledger_with(A)
    batch = ledger.track({A: (0, 5), B: (0, 5)})  # B's records arrived just after it was revoked
    assert ledger.fail(batch) == {A: 0}
    ledger.rewound(A)
    ledger.ack(ledger.track({A: (0, 5)}))
    ledger.revoke([A])
    late = ledger.track({A: (5, 9)})
    ledger.ack(late)
    ledger.committed({A: 9})
    assert ledger.committable() == {} and ledger.fail(late) == {}


def test_reassigned_partition_starts_fresh():
    ledger = ledger_with(A)
    ledger.ack(ledger.track({A: (0, 5)}))
    ledger.committed({A: 5})
    ledger.revoke([A])
    ledger.assign([A])
    assert ledger.low_watermark(A) is None
    ledger.ack(ledger.track({A: (40, 50)}))  # another owner committed up to 40 meanwhile
    assert ledger.committable() == {A: 50}


def test_redeliveries_are_counted_against_the_highest_offset_seen():
    ledger = ledger_with(A)
    ledger.fail(ledger.track({A: (0, 10)}))
    assert ledger.redelivered({A: (0, 15)}) == 10
    assert ledger.redelivered({B: (0, 15)}) == 0


def test_low_watermark_is_the_oldest_unacked_offset():
    ledger = ledger_with(A)
    first = ledger.track({A: (3, 8)})
    ledger.track({A: (8, 12)})
    assert ledger.low_watermark(A) == 3
    ledger.ack(first)
    assert ledger.low_watermark(A) == 8
    ledger.fail(ledger.track({A: (12, 15)}))
    assert ledger.low_watermark(A) == 8  # the failed batch and the one before it are to be redone


def test_low_watermark_after_a_first_batch_failed_is_the_rewind_offset():
    ledger = ledger_with(A)
    ledger.fail(ledger.track({A: (3, 8)}))
    assert ledger.low_watermark(A) == 3


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="end > start"):
        ledger_with(A).track({A: (5, 5)})


def test_records_fetched_before_the_rewind_is_performed_never_advance_the_commit():
    ledger = ledger_with(A)
    failed = ledger.track({A: (0, 10)})
    assert ledger.fail(failed) == {A: 0} and ledger.rewinds() == {A: 0}
    ledger.ack(ledger.track({A: (10, 20)}))  # fetched after the failure, before the seek: a gap below it
    assert ledger.committable() == {}
    ledger.rewound(A)
    assert ledger.rewinds() == {}
    ledger.ack(ledger.track({A: (0, 20)}))
    assert ledger.committable() == {A: 20}


def test_a_revoke_cancels_a_pending_rewind():
    ledger = ledger_with(A)
    ledger.fail(ledger.track({A: (0, 10)}))
    ledger.revoke([A])
    assert ledger.rewinds() == {}
