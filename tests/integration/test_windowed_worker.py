"""A windowed model in the worker on the real stack: whichever worker judges a source's events, and however often
workers come, go or crash, each source's verdicts score as one pass of the model over that source's sequence."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models import RVAEScorer
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.ops.processes import running, worker_health, worker_ports
from stream_app.registry.versions import Registry
from stream_app.settings import Settings
from stream_app.wire.codecs import encode_vector
from tests.integration.test_windowed_judging import scorer, sensor_sequence
from tests.integration.test_worker import consume_all, worker_settings

__all__ = ["scorer"]  # fixture
pytestmark = pytest.mark.integration

PARTITION_OF = {"line-1/a": 0, "line-1/b": 0, "line-2/a": 1, "line-2/b": 1}  # both partitions carry sources
SPIKE = ("line-1/a", 70)  # sensor f2 of this event jumps: its alert must name f2 at lag t


def sequences(n: int, seed: int) -> dict[str, np.ndarray]:
    seqs = {src: sensor_sequence(n, seed + i) for i, src in enumerate(PARTITION_OF)}
    seqs[SPIKE[0]][SPIKE[1], 2] += 40.0
    return seqs


def setup(make_settings: Callable[..., Settings], tmp_path, scorer: RVAEScorer) -> Settings:
    settings = worker_settings(make_settings, tmp_path)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)
    return settings


async def publish(settings: Settings, seqs: dict[str, np.ndarray], lo: int, hi: int) -> None:
    """Events lo..hi-1 of every source, round robin, each source on its partition in its own order."""
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        for i in range(lo, hi):
            for src, part in PARTITION_OF.items():
                truth = b"spike" if (src, i) == SPIKE else b"normal"
                await producer.send(settings.topics.vectors, encode_vector(src, seqs[src][i]), src.encode(),
                                    partition=part, headers=[("truth", truth)])  # fmt: skip
        await producer.flush()


async def verdicts(settings: Settings, n: int) -> list[dict]:
    """Verdicts until n distinct events have one (a redelivered event's verdicts are all included)."""

    def events(records: list) -> int:
        return len({(b["partition"], b["offset"]) for b in (orjson.loads(r.value) for r in records)})

    return [
        orjson.loads(r.value) for r in await consume_all(settings, settings.topics.scores, lambda r: events(r) >= n)
    ]


def assert_one_pass_per_source(bodies: list[dict], seqs: dict[str, np.ndarray], scorer: RVAEScorer) -> None:
    """Each event has one verdict or identical ones (redeliveries); each source's scores in offset order equal
    the model scoring that source's whole sequence at once."""
    first: dict[tuple[int, int], dict] = {}
    for b in bodies:
        key = (b["partition"], b["offset"])
        same = ("score", "threshold", "anomalous", "incident_id")
        assert key not in first or all(first[key][f] == b[f] for f in same), f"a redelivered verdict differs: {b}"
        first.setdefault(key, b)
    for src, seq in seqs.items():
        mine = sorted((b for b in first.values() if b["source"] == src), key=lambda b: b["offset"])
        assert len(mine) == len(seq)
        np.testing.assert_allclose([b["score"] for b in mine], scorer.score(seq), rtol=1e-5, atol=1e-6)


async def wait_for_split(settings: Settings, timeout_s: float = 60.0) -> None:
    """Until two workers each consume one partition of the input topic."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        ports = worker_ports(settings)
        if len(ports) == 2:
            healths = await asyncio.gather(*(asyncio.to_thread(worker_health, p) for p in ports))
            owned = [[p for p in h.get("partitions", []) if p.startswith(settings.topics.vectors)] for h in healths]
            if all(len(o) == 1 for o in owned):
                return
        await asyncio.sleep(0.5)
    raise AssertionError("two workers never split the input partitions")


async def test_two_workers_score_each_source_as_one_pass_across_partition_moves(make_settings, tmp_path, scorer):
    settings = setup(make_settings, tmp_path, scorer)
    await ensure_topics(settings)
    seqs = sequences(90, seed=40)
    with running(settings, "worker"):
        await publish(settings, seqs, 0, 30)
        await verdicts(settings, 4 * 30)
        with running(settings, "worker"):  # joins: one partition moves to it (a cold cache)
            await wait_for_split(settings)
            await publish(settings, seqs, 30, 60)
            await verdicts(settings, 4 * 60)
        await publish(settings, seqs, 60, 90)  # it left: the partition comes back to a stale cache
        bodies = await verdicts(settings, 4 * 90)
        alerts = await consume_all(
            settings, settings.topics.alerts, lambda r: any(dict(a.headers).get("truth") == b"spike" for a in r), 30
        )
    assert_one_pass_per_source(bodies, seqs, scorer)
    spike = next(orjson.loads(a.value) for a in alerts if dict(a.headers).get("truth") == b"spike")
    top = spike["explanation"]["top_features"][0]
    assert top["feature"] == "f2@t" and top["value"] == pytest.approx(float(seqs[SPIKE[0]][SPIKE[1], 2]))
    assert spike["score"] == pytest.approx(float(scorer.score(seqs[SPIKE[0]])[SPIKE[1]]), rel=1e-5)


async def test_a_worker_killed_mid_stream_is_replaced_without_losing_the_sources_history(
    make_settings, tmp_path, scorer
):
    settings = setup(make_settings, tmp_path, scorer)
    await ensure_topics(settings)
    seqs = sequences(80, seed=60)
    with running(settings, "worker") as crashed:
        await publish(settings, seqs, 0, 40)
        await verdicts(settings, 4 * 40)
        os.killpg(crashed.pid, signal.SIGKILL)  # right after its verdicts: its last offsets may be uncommitted
        crashed.wait()
    with running(settings, "worker"):  # a cold cache: its first batches conflict and rescore after stored rows
        await publish(settings, seqs, 40, 80)
        bodies = await verdicts(settings, 4 * 80)
    assert_one_pass_per_source(bodies, seqs, scorer)
