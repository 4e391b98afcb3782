"""Pure parts of the local stack launcher (no servers started)."""

from __future__ import annotations

import base64
import uuid

import pytest

from deploy import localstack


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch):
    # 0xF8 puts base64url index 62 ('-') first; the storage tool's parser would read it as an option.
    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    draws = iter([dash_first, plain])
    monkeypatch.setattr(localstack.uuid, "uuid4", lambda: next(draws))

    cluster_id = localstack._kraft_cluster_id()

    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
