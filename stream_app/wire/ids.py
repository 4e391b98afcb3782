"""Identities of consumed events: the key a verdict is remembered under and the public alert id.

An event is `topic/partition/offset`: unique and the same on every worker, so a redelivered event is known again
(at-least-once). Its alert id is a hash of that key; hashing costs about as much as judging, so the vector path keys
its bookkeeping by the plain key and hashes only the events that raise an alert or open an incident.
"""

from __future__ import annotations

import hashlib

ALERT_ID_HEX = 20


def event_key(topic: str, partition: int, offset: int) -> str:
    """The name of the event at this offset.

    >>> event_key("sensor.vectors", 0, 42)
    'sensor.vectors/0/42'
    """
    return f"{topic}/{partition}/{offset}"


def alert_id_of(key: str) -> str:
    """The alert id of the event with this `event_key`."""
    return hashlib.sha1(key.encode()).hexdigest()[:ALERT_ID_HEX]


def alert_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic id of the alert an input record can raise.

    >>> alert_id("sensor.vectors", 0, 42) == alert_id("sensor.vectors", 0, 42) != alert_id("sensor.vectors", 1, 42)
    True
    """
    return alert_id_of(event_key(topic, partition, offset))
