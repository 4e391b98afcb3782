"""Pure parts of the local stack launcher (no servers started)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

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


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_a_lone_node_keeps_its_name_ports_and_one_copy(tmp_path: Path):
    (node,) = localstack.kafka_nodes(1, 19092, 19093)
    assert (node.name, node.node_id, node.address) == ("kafka", 1, "127.0.0.1:19092")

    rendered = props(localstack.server_properties(node, [node], tmp_path / "data"))

    assert rendered["node.id"] == "1"
    assert rendered["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert rendered["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert rendered["log.dirs"] == str(tmp_path / "data")
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "min.insync.replicas", "transaction.state.log.min.isr"):  # fmt: skip
        assert rendered[key] == "1", key


def test_three_nodes_share_the_quorum_and_replicate_three_times_two_in_sync(tmp_path: Path):
    nodes = localstack.kafka_nodes(3, 19092, 19093)
    assert [(n.name, n.port, n.controller_port) for n in nodes] == [
        ("kafka-1", 19092, 19093), ("kafka-2", 19102, 19103), ("kafka-3", 19112, 19113),
    ]  # fmt: skip

    rendered = [props(localstack.server_properties(n, nodes, tmp_path / n.name)) for n in nodes]

    voters = "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    assert [r["controller.quorum.voters"] for r in rendered] == [voters] * 3
    assert [r["node.id"] for r in rendered] == ["1", "2", "3"]
    assert [r["advertised.listeners"] for r in rendered] == [
        f"PLAINTEXT://127.0.0.1:{p}" for p in (19092, 19102, 19112)
    ]
    assert len({r["log.dirs"] for r in rendered}) == 3
    for r in rendered:
        assert r["default.replication.factor"] == r["offsets.topic.replication.factor"] == "3"
        assert r["transaction.state.log.replication.factor"] == "3"
        assert r["min.insync.replicas"] == r["transaction.state.log.min.isr"] == "2"


def test_given_ports_place_the_other_nodes():
    nodes = localstack.kafka_nodes(3, 4000, 4001, other_ports=((5000, 5001), (6000, 6001)))
    assert localstack.quorum_voters(nodes) == "1@127.0.0.1:4001,2@127.0.0.1:5001,3@127.0.0.1:6001"
    with pytest.raises(localstack.StackError, match="ports of 2 more node"):
        localstack.kafka_nodes(3, 4000, 4001, other_ports=((5000, 5001),))


def test_free_ports_picks_a_stack_whose_ports_all_differ(tmp_path: Path):
    stack = localstack.LocalStack.on_free_ports(tmp_path, tmp_path / "cache", brokers=3)
    ports = [p for n in stack.nodes for p in (n.port, n.controller_port)] + [stack.redis_port]
    assert len(set(ports)) == 7
    assert stack.bootstrap == ",".join(f"127.0.0.1:{n.port}" for n in stack.nodes)


def formatted(state_dir: Path, *names: str) -> None:
    for name in names:
        (state_dir / name / "data").mkdir(parents=True)
        (state_dir / name / "data" / "meta.properties").write_text("cluster.id=abc\nnode.id=1\n")


def test_status_and_down_find_the_nodes_the_state_dir_was_formatted_for(tmp_path: Path):
    from stream_app.settings import Settings

    settings = Settings(state_dir=tmp_path)
    assert localstack.LocalStack.from_settings(settings).brokers == 1  # nothing formatted: stack.brokers
    formatted(tmp_path, "kafka-1", "kafka-2", "kafka-3")

    assert localstack.LocalStack.from_settings(settings).brokers == 3
    assert [n.name for n in localstack.LocalStack.from_settings(settings).nodes] == ["kafka-1", "kafka-2", "kafka-3"]


def test_up_refuses_another_node_count_than_the_state_dir_holds(tmp_path: Path):
    formatted(tmp_path, "kafka")
    stack = localstack.LocalStack(state_dir=tmp_path, cache_dir=tmp_path / "cache", brokers=3)

    with pytest.raises(localstack.StackError, match=r"1-node Kafka cluster, not 3.*--brokers 1"):
        stack.up()
    assert not (tmp_path / "redis.pid").exists()  # refused before starting anything


def test_a_secured_stack_is_one_node(tmp_path: Path):
    from deploy.secured import SecuredStack

    with pytest.raises(localstack.StackError, match="one Kafka node"):
        SecuredStack(state_dir=tmp_path, cache_dir=tmp_path / "cache", brokers=3)


def test_group_warm_up_retries_with_fresh_clients_and_gives_up_at_its_deadline(monkeypatch: pytest.MonkeyPatch):
    """Nothing listens on the bootstrap: each attempt is abandoned after WARMUP_ATTEMPT_S for a new client, and
    start-up fails with a StackError once the stack's timeout is spent (not before, not much after)."""
    import time

    import aiokafka

    clients: list[object] = []

    class Counted(aiokafka.AIOKafkaConsumer):
        def __init__(self, *args, **kwargs) -> None:
            clients.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", Counted)
    monkeypatch.setattr(localstack, "WARMUP_ATTEMPT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(localstack.StackError, match="consumer groups do not work yet"):
        localstack._warm_group_coordinator(f"127.0.0.1:{localstack.free_port()}", timeout_s=2.0)
    assert 1.0 <= time.monotonic() - started < 6.0 and len(clients) >= 2
