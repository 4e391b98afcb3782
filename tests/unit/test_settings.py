"""The settings object: defaults, TOML file, environment overrides, short-form URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from stream_app.settings import Settings, TopicSettings, load_settings


def test_defaults_match_the_topic_contract():
    s = load_settings()
    assert (s.topics.vectors, s.topics.frames, s.topics.alerts) == (
        "sensor.vectors",
        "camera.frames",
        "inspection.alerts",
    )
    assert (s.topics.scores, s.topics.deadletter, s.topics.model_updates) == (
        "inspection.scores",
        "inspection.deadletter",
        "inspection.model-updates",
    )


def test_environment_overrides_nested_fields_and_short_forms(monkeypatch):
    monkeypatch.setenv("LINEWATCH_BATCHING__MAX_BATCH", "512")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("REDIS_URL", "rediss://:secret@cache:6380/1")
    monkeypatch.setenv("LINEWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    s = load_settings()
    assert s.batching.max_batch == 512
    assert s.kafka.bootstrap == "broker:9092"
    assert s.redis.url == "rediss://:secret@cache:6380/1"
    assert s.kafka.security_protocol == "SASL_SSL"


def test_toml_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch):
    config = tmp_path / "linewatch.toml"
    config.write_text(
        '[batching]\nmax_batch = 64\nmax_wait_ms = 20\n\n[[routes]]\npattern = "line-1/*"\nmodel = "press"\n'
    )
    monkeypatch.setenv("LINEWATCH_BATCHING__MAX_WAIT_MS", "5")
    s = load_settings(config)
    assert s.batching.max_batch == 64
    assert s.batching.max_wait_ms == 5
    assert [(r.pattern, r.model) for r in s.routes] == [("line-1/*", "press")]


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("LINEWATCH_THRESHOLDS__RISK", "2")
    with pytest.raises(ValueError, match="risk"):
        load_settings()


def test_child_config_files_are_private_read_back_equal_reused_and_removed(tmp_path: Path):
    from stream_app.ops.processes import remove_config, write_config

    settings = load_settings(state_dir=tmp_path)
    first = write_config(settings, tmp_path)
    assert write_config(settings, tmp_path) == first  # equal settings share one file: re-runs do not pile up
    assert first.stat().st_mode & 0o777 == 0o600
    assert load_settings(config_file=first).batching == settings.batching

    changed = settings.model_copy(update={"batching": settings.batching.model_copy(update={"max_batch": 7})})
    other = write_config(changed, tmp_path)
    assert other != first and load_settings(config_file=other).batching.max_batch == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temp files left

    remove_config(changed)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_passwords_are_secret_in_dumps_but_reach_child_settings_files(tmp_path):
    from stream_app.ops.processes import write_config
    from stream_app.settings import load_settings

    s = Settings()
    s.kafka.sasl_password = SecretStr("kafka-pw")
    s.redis.password = SecretStr("redis-pw")
    assert "kafka-pw" not in repr(s) and "redis-pw" not in s.model_dump_json()
    child = load_settings(write_config(s, tmp_path))
    assert child.kafka.sasl_password.get_secret_value() == "kafka-pw"
    assert child.redis.password.get_secret_value() == "redis-pw"


def test_topic_replication_follows_the_cluster_unless_set():
    derived = TopicSettings()
    assert [derived.replication(n) for n in (1, 2, 3, 6)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    assert TopicSettings(replication_factor=5).replication(6) == (5, 2)
    assert TopicSettings(replication_factor=3, min_insync_replicas=3).replication(1) == (3, 3)  # the cluster refuses


def test_prefixed_topics_keep_their_replication_settings():
    prefixed = TopicSettings(replication_factor=3, min_insync_replicas=2).prefixed("run", partitions=2)
    assert (prefixed.vectors, prefixed.partitions) == ("run.sensor.vectors", 2)
    assert (prefixed.replication_factor, prefixed.min_insync_replicas) == (3, 2)
