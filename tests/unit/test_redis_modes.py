"""Redis beyond one node, without servers: settings, the client each mode builds, key layout, error causes."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError

from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import SentinelRedis, redis_client
from stream_app.scoring.consumer import cause_of
from stream_app.settings import RedisSettings, Settings, ThresholdSettings, load_settings


def test_modes_and_their_addresses_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LINEWATCH_REDIS__MODE", "sentinel")
    monkeypatch.setenv("LINEWATCH_REDIS__SENTINELS", '["s1:26379", "s2:26379"]')
    monkeypatch.setenv("LINEWATCH_REDIS__SENTINEL_SERVICE", "thresholds")
    s = load_settings()
    assert (s.redis.mode, s.redis.sentinels, s.redis.sentinel_service) == (
        "sentinel", ["s1:26379", "s2:26379"], "thresholds",
    )  # fmt: skip
    assert RedisSettings().mode == "single" and RedisSettings().slot_groups == 16


def test_sentinel_mode_without_sentinels_and_bad_addresses_are_refused():
    with pytest.raises(ValidationError, match="sentinels"):
        RedisSettings(mode="sentinel")
    with pytest.raises(ValidationError, match="host:port"):
        RedisSettings(mode="cluster", cluster_nodes=["no-port"])
    with pytest.raises(ValidationError, match="cluster"):
        RedisSettings(mode="cluster", url="redis://127.0.0.1:7000/2")  # a cluster has only database 0


def test_cluster_mode_builds_a_cluster_client_with_auth_tls_and_timeouts():
    cfg = RedisSettings(
        mode="cluster", url="rediss://10.0.0.1:7000/0", cluster_nodes=["10.0.0.2:7001"], username="lw",
        password=SecretStr("pw"), ssl_ca_certs="/etc/ca.pem", socket_timeout_s=1.5,
    )  # fmt: skip
    client = redis_client(cfg)
    assert isinstance(client, RedisCluster)
    assert {(n.host, n.port) for n in client.startup_nodes} == {("10.0.0.1", 7000), ("10.0.0.2", 7001)}
    kw = client.connection_kwargs
    assert (kw["username"], kw["password"], kw["ssl_ca_certs"]) == ("lw", "pw", "/etc/ca.pem")
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (1.5, cfg.socket_connect_timeout_s)


async def test_sentinel_mode_builds_a_master_client_with_auth_tls_and_timeouts():
    cfg = RedisSettings(
        mode="sentinel", url="rediss://ignored:1/3", sentinels=["10.0.0.1:26379", "10.0.0.2:26380"],
        sentinel_service="thr", password=SecretStr("pw"), sentinel_password=SecretStr("spw"),
        ssl_ca_certs="/etc/ca.pem", socket_timeout_s=1.5,
    )  # fmt: skip
    client = redis_client(cfg)
    assert isinstance(client, SentinelRedis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "thr"
    assert pool.connection_class is SentinelManagedSSLConnection
    kw = pool.connection_kwargs
    assert (kw["password"], kw["db"], kw["ssl_ca_certs"], kw["socket_timeout"]) == ("pw", 3, "/etc/ca.pem", 1.5)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]  # fmt: skip
    skw = sentinels[0].connection_pool.connection_kwargs
    assert (skw["password"], skw["socket_timeout"], skw["ssl_ca_certs"]) == ("spw", 1.5, "/etc/ca.pem")
    assert sentinels[0].connection_pool.connection_class is SSLConnection
    await client.aclose()


def test_sentinel_password_is_a_secret_in_dumps():
    s = Settings()
    s.redis.sentinel_password = SecretStr("sentinel-pw")
    assert "sentinel-pw" not in s.model_dump_json()


@pytest.mark.parametrize(
    "exc",
    [
        ClusterDownError("CLUSTERDOWN"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError("slot 5 not covered"),
        RedisClusterException("Redis Cluster cannot be connected"),
    ],
)
def test_cluster_failover_errors_are_redis_faults_not_pipeline_bugs(exc):
    assert cause_of(exc) == "redis"


def store(cluster: bool) -> ThresholdStore:
    cfg = RedisSettings(mode="cluster", url="redis://127.0.0.1:7000/0") if cluster else RedisSettings()
    return ThresholdStore(redis_client(cfg), ThresholdSettings(), Settings().incidents, "lw", slot_groups=4)


def test_single_node_keys_keep_their_layout_and_cluster_keys_carry_a_group_hash_tag():
    single, cluster = store(False), store(True)
    assert single.key("sensors", "0003", "line-1/m:0") == f"lw:thr:sensors:0003:{single._tag}:line-1/m:0"
    key = cluster.key("sensors", "0003", "line-1/m:0")
    assert key.startswith("lw:thr:{sensors:g") and key.endswith(f"}}:0003:{cluster._tag}:line-1/m:0")
    tags = {cluster.key("sensors", "0003", f"s{i}").split("}")[0] for i in range(200)}
    assert len(tags) == 4, "sources spread over every group, no more"
    assert cluster.key("sensors", "0004", "s1").split("}")[0] == cluster.key("sensors", "0003", "s1").split("}")[0]
    for s in (single, cluster):
        assert ThresholdStore.parse_key(s.key("sensors", "0003", "line-1/m:0"), "lw") == (
            "sensors", "0003", s._tag, "line-1/m:0",
        )  # fmt: skip


def test_structured_source_names_fill_every_slot_group():
    cluster = ThresholdStore(
        redis_client(RedisSettings(mode="cluster", url="redis://127.0.0.1:7000/0")),
        ThresholdSettings(), Settings().incidents, "lw", slot_groups=16,
    )  # fmt: skip
    names = [f"line-{i // 8}/press-{i % 8}" for i in range(64)]
    assert len({cluster.key("sensors", "0001", n).split("}")[0] for n in names}) == 16
