"""One typed settings object: defaults, then a TOML file, then environment variables.

Created once (`load_settings`) and passed down; no other module reads the environment.
Nested fields use `LINEWATCH_<SECTION>__<FIELD>`, e.g. `LINEWATCH_BATCHING__MAX_BATCH=512`.
`KAFKA_BOOTSTRAP` and `REDIS_URL` are honoured as the common short forms.
Kafka SASL/TLS and Redis AUTH/TLS are settings here, never code changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REVEAL_SECRETS = "reveal_secrets"  # serialisation context key: a child process's settings file needs them


def secret_value(value: SecretStr | str | None) -> str | None:
    """The clear text of a secret setting (assignments after validation may have left a plain str)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _secret_json(value: SecretStr | str | None, info: SerializationInfo) -> str | None:
    """Secrets dump masked ("**********") unless the caller passes context {REVEAL_SECRETS: True}."""
    if value is None:
        return None
    return secret_value(value) if (info.context or {}).get(REVEAL_SECRETS) else "**********"


class KafkaSettings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # its values hold secrets

    bootstrap: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    max_message_bytes: int = 8 * 1024 * 1024
    request_timeout_ms: int = Field(
        15_000, ge=1000, description="every Kafka request and connect; a batch's outputs fail after this"
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="a silent worker's partitions move on after this")
    heartbeat_interval_ms: int = Field(3_000, ge=100)

    _dump_password = field_serializer("sasl_password", when_used="json")(_secret_json)


def _host_port(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise ValueError(f"expected host:port, got {address!r}")
    return address


class RedisSettings(BaseModel):
    """`url` says where (rediss:// for TLS); `username`/`password` (ACL user, AUTH) override any in the URL.

    `mode`: `single` (one server, or a primary at a fixed address), `cluster` (Redis Cluster: `url` and
    `cluster_nodes` are seed nodes, the client discovers the rest and follows failovers) or `sentinel` (the
    primary of `sentinel_service` as `sentinels` report it; `url` then gives only scheme, database and
    credentials). AUTH, TLS and timeouts apply to every node in every mode.
    """

    model_config = ConfigDict(hide_input_in_errors=True)  # its values hold secrets

    url: str = "redis://127.0.0.1:16379/0"
    mode: Literal["single", "cluster", "sentinel"] = "single"
    cluster_nodes: list[str] = Field(default_factory=list, description="more cluster seed nodes, host:port")
    sentinels: list[str] = Field(default_factory=list, description="host:port of each sentinel")
    sentinel_service: str = "mymaster"
    sentinel_password: SecretStr | None = None
    slot_groups: int = Field(
        16, ge=1, le=1024, description="cluster: hash-tag groups per model (script calls per batch)"
    )
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: str | None = None
    key_prefix: str = "lw"
    socket_timeout_s: float = Field(5.0, gt=0, description="a Redis that accepts but never answers fails a batch")
    socket_connect_timeout_s: float = Field(2.0, gt=0)

    _dump_password = field_serializer("password", "sentinel_password", when_used="json")(_secret_json)

    @field_validator("cluster_nodes", "sentinels")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_host_port(a) for a in value]

    @model_validator(mode="after")
    def _mode_needs(self) -> RedisSettings:
        if self.mode == "sentinel" and not self.sentinels:
            raise ValueError("redis.mode = 'sentinel' needs redis.sentinels (host:port of each sentinel)")
        db = urlparse(self.url).path.strip("/")
        if self.mode == "cluster" and db not in ("", "0"):
            raise ValueError(f"a Redis cluster has only database 0; redis.url names database {db}")
        return self


class TopicSettings(BaseModel):
    vectors: str = "sensor.vectors"
    frames: str = "camera.frames"
    alerts: str = "inspection.alerts"
    scores: str = "inspection.scores"
    deadletter: str = "inspection.deadletter"
    model_updates: str = "inspection.model-updates"
    control: str = "inspection.control"
    labels: str = "inspection.labels"
    partitions: int = 4
    replication_factor: int | None = Field(
        None, ge=1, description="copies of each new topic's partitions; None: 3, or every broker of a smaller cluster"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="copies an acks=all write needs (topic config); None: 2 with 3+ copies, else 1"
    )

    def prefixed(self, prefix: str, partitions: int | None = None) -> TopicSettings:
        """Every topic renamed `<prefix>.<name>`: one run's own topics (demo, tests, benchmarks).

        >>> TopicSettings().prefixed("run-1", partitions=2).alerts
        'run-1.inspection.alerts'
        """
        names = {f: f"{prefix}.{v}" for f, v in self if isinstance(v, str)}
        return self.model_copy(update={**names, "partitions": self.partitions if partitions is None else partitions})

    def replication(self, brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for new topics on a cluster of `brokers` brokers.

        Three copies with two in sync by default: a broker may fail without refusing a write or losing an
        acknowledged one. A smaller cluster keeps a copy on every broker and needs one in sync.

        >>> TopicSettings().replication(3), TopicSettings().replication(5), TopicSettings().replication(1)
        ((3, 2), (3, 2), (1, 1))
        """
        factor = self.replication_factor or min(3, brokers)
        return factor, self.min_insync_replicas or (2 if factor >= 3 else 1)


class BatchSettings(BaseModel):
    """Micro-batching: `getmany` (aiokafka consumer under the faust app, the default, faster here; see
    benchmarks/results/pipeline.json) or `faust` (agents with `take_events`). A batch holds up to `max_batch`
    records, of which at most `max_image_batch` camera frames (heavy to decode and score). Vector-only workers
    drain a backlog ~1.5x faster with `max_batch` 1024; the default stays 256 because SPOT refits its tail once
    per batch, so in big catch-up batches during a drift the level follows more slowly (docs/configuration.md)."""

    max_batch: int = Field(256, ge=1, description="records per micro-batch at most")
    max_image_batch: int = Field(256, ge=1, description="camera frames per micro-batch at most")
    max_wait_ms: float = Field(50.0, gt=0)
    consumer: Literal["getmany", "faust"] = "getmany"

    def size_for(self, kind: str) -> int:
        """The most events of a data kind ("vectors" or "images") one batch holds."""
        return self.max_batch if kind == "vectors" else min(self.max_batch, self.max_image_batch)


class RecoverySettings(BaseModel):
    """How a worker rides out unreachable dependencies and rebalances (see stream_app/scoring/consumer.py)."""

    retry_base_s: float = Field(0.5, gt=0, description="first retry delay after a failed batch; doubles each time")
    retry_max_s: float = Field(15.0, gt=0, description="cap on the retry delay (jittered in its upper half)")
    probe_interval_s: float = Field(2.0, gt=0, description="Redis/Kafka reachability and lag are checked this often")
    stall_after_s: float = Field(60.0, gt=0, description="/health: a partition with lag that has not advanced")
    model_check_s: float = Field(
        60.0, gt=0, description="served models are compared with the registry's production pointer this often"
    )
    revoke_wait_s: float = Field(8.0, ge=0, description="on a rebalance, wait this long for in-flight batches")
    log_repeat_s: float = Field(30.0, gt=0, description="identical warnings/errors logged once per interval")
    replay_batches: int = Field(
        4,
        ge=1,
        le=32,  # the threshold store names remembered batches modulo 64
        description="judged batches each source remembers, so events judged again get the same verdicts",
    )


class ThresholdSettings(BaseModel):
    mode: Literal["spot", "quantile", "ewma"] = "spot"
    risk: float = Field(1e-3, gt=0, lt=0.5, description="target false-alarm probability per event")
    init_quantile: float = Field(0.98, gt=0.5, lt=1.0, description="SPOT initial threshold quantile")
    window: int = Field(2000, ge=50, description="scores (quantile) or peaks (SPOT) kept per source")
    ewma_alpha: float = Field(0.01, gt=0, le=1)
    ewma_k: float = Field(4.0, gt=0)
    horizon: int = Field(
        100_000, ge=100, description="SPOT: events its rate estimates remember (exponential decay, 1/e after this many)"
    )
    stuck_factor: float = Field(10.0, gt=1, description="SPOT: an alarm rate above this x risk counts as high...")
    stuck_events: int = Field(20_000, ge=1, description="...and flags the source stuck after this many events")


class IncidentSettings(BaseModel):
    open_k: int = Field(3, ge=1, description="open an incident when k of the last n events are anomalous")
    open_n: int = Field(5, ge=1)
    close_m: int = Field(20, ge=1, description="close after m consecutive normal events")

    @model_validator(mode="after")
    def _k_of_n(self) -> IncidentSettings:
        if self.open_k > self.open_n:  # refused at start-up, not by every batch of a running worker
            raise ValueError(f"open_k ({self.open_k}) must not exceed open_n ({self.open_n})")
        return self


class StackSettings(BaseModel):
    """The local no-Docker stack (`linewatch stack up`): ports on 127.0.0.1 and where jars are cached."""

    kafka_port: int = 19092
    controller_port: int = 19093
    redis_port: int = 16379
    kafka_version: str = "3.9.1"
    cache_dir: Path = Path.home() / ".cache" / "linewatch"
    kafka_heap_mb: int = Field(512, description="heap of each broker's JVM")
    ready_timeout_s: float = 90.0
    brokers: int = Field(
        1, ge=1, description="KRaft nodes (broker + controller each); node i listens on the ports + 10 x (i - 1)"
    )


class RetrainSchedule(BaseModel):
    """When the retraining agent refits `model`: a cron expression (croniter) or a fixed interval."""

    model: str
    cron: str | None = None
    interval_s: float | None = Field(None, gt=0)


class RetrainSettings(BaseModel):
    """The retraining agent (`linewatch retrain`): data window, poisoning guard, fit and validation rules."""

    schedules: list[RetrainSchedule] = Field(default_factory=list)
    window_s: float | None = Field(3600.0, gt=0, description="recent window by record time; None: count only")
    window_events: int | None = Field(None, ge=1, description="or the newest N events of the input topic")
    max_samples: int = Field(20_000, ge=10, description="cap on training+holdout rows (evenly spaced)")
    min_samples: int = Field(200, ge=10, description="fewer clean events than this: skip the cycle")
    guard: bool = Field(True, description="poisoning guard; off only for experiments")
    guard_margin_events: int = Field(50, ge=0, description="drop this many events of a source around an anomaly")
    guard_margin_s: float = Field(10.0, ge=0, description="and events this close in time to one")
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9, description="newest clean events kept for validation")
    epochs: int = Field(60, ge=1)
    max_false_alarm_rate: float = Field(0.01, gt=0, lt=1, description="candidate on held-back normal data")
    detection_tolerance: float = Field(0.1, ge=0, le=1, description="allowed drop in regression-set detection rate")
    canary_sigma: float = Field(6.0, gt=0, description="vector canaries: sensor offset / stuck level in robust sigmas")
    canary_events: int = Field(200, ge=10, description="canary events per fault kind (images: a quarter)")
    max_threshold_ratio: float = Field(
        4.0, gt=1, description="candidate/production calibrated threshold ratio allowed, either way"
    )
    regression_max_events: int = Field(2000, ge=10, description="confirmed incident events kept per model")
    incident_min_severity: float = Field(
        3.0, ge=1.0, description="incident events that join the regression set score >= this x threshold"
    )
    threads: int | None = Field(1, ge=1, description="torch CPU threads of a running agent (None: all cores)")
    auto_promote: bool = True
    keep_rejected: bool = Field(True, description="store rejected candidates in the registry for audit")
    announce_attempts: int = Field(5, ge=1, description="tries to announce a promoted version, with backoff")
    control_max_age_s: float = Field(300.0, gt=0, description="ignore control messages older than this at start")


class LimitSettings(BaseModel):
    """Bounds on what producers can make a worker hold: checked per record, before the expensive step.

    The defaults sit a few times above the largest routed model input (384x384 for the ViT scorers), so a
    real camera frame always passes and a crafted one is a dead letter instead of gigabytes of RAM.
    """

    max_image_pixels: int = Field(4096 * 4096, ge=64, description="width x height from the image header")
    max_decoded_batch_bytes: int = Field(
        1024**3, ge=1024, description="decoded image bytes one decode call may hold; beyond: dead letter"
    )
    max_source_chars: int = Field(256, ge=1, description="longer source ids are refused as bad_schema")
    max_sources_per_model: int = Field(10_000, ge=1, description="distinct sources a worker tracks per model")
    source_state_ttl_s: float | None = Field(
        7 * 86400.0, gt=0, description="a source silent this long loses its threshold state and metric series"
    )
    deadletter_margin_bytes: int = Field(
        4096, ge=0, description="kept free under kafka.max_message_bytes for record framing"
    )

    @model_validator(mode="after")
    def _one_frame_fits(self) -> LimitSettings:
        if self.max_decoded_batch_bytes < 3 * self.max_image_pixels:  # else the largest allowed frame never decodes
            raise ValueError(
                f"max_decoded_batch_bytes ({self.max_decoded_batch_bytes}) must hold one RGB frame of "
                f"max_image_pixels ({self.max_image_pixels} x 3 bytes)"
            )
        return self


class CameraSettings(BaseModel):
    """Live camera feeding (`linewatch feed camera --genicam/--url`): encoding, buffers, reconnects."""

    encoding: Literal["png", "jpeg"] = Field("png", description="png is lossless; jpeg is smaller and cheaper")
    jpeg_quality: int = Field(90, ge=1, le=100)
    png_level: int = Field(1, ge=0, le=9, description="zlib level: 1 costs a fraction of 6's CPU for ~5% more bytes")
    encode_workers: int = Field(2, ge=1, description="threads encoding frames off the event loop")
    buffers: int = Field(16, ge=2, description="GenICam stream buffers preallocated for the camera to fill")
    buffer_timeout_s: float = Field(1.0, gt=0, description="wait for a buffer this long, then check the camera")
    reconnect_initial_s: float = Field(0.5, gt=0, description="first reconnect delay; doubles per failure")
    reconnect_max_s: float = Field(10.0, gt=0)
    reconnect_give_up_s: float | None = Field(None, ge=0, description="stop after retrying this long; None: never")
    open_timeout_s: float = Field(5.0, gt=0, description="video/RTSP: open and read timeouts")
    in_flight: int = Field(32, ge=1, description="frames sent to Kafka before waiting for acknowledgements")


class Route(BaseModel):
    """Sources matching `pattern` (fnmatch) are scored by registry model `model`."""

    pattern: str
    model: str


class ConsoleSettings(BaseModel):
    """The operator console (`linewatch console`): where it listens, who may act, how much it remembers.

    Passwords and the token are stored as scrypt hashes (`linewatch console hash-password`), never in clear.
    Pages are readable without a login when `anonymous_read` is on; promote, rollback and labels always
    need one, and nobody can log in until `users` or `token_hash` is set.
    """

    model_config = ConfigDict(hide_input_in_errors=True)  # its values hold secrets

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    users: dict[str, SecretStr] = Field(default_factory=dict, description="user name -> scrypt hash")
    token_hash: SecretStr | None = Field(None, description="scrypt hash of an operator token (login by token)")
    anonymous_read: bool = Field(True, description="pages readable without a login (actions never are)")
    session_secret: SecretStr | None = Field(None, description="signs session cookies; None: random per process")
    session_max_age_s: float = Field(8 * 3600.0, gt=0)
    stale_after_s: float = Field(10.0, gt=0, description="a source with no verdict for this long shows 'no data'")
    deadletter_window_s: float = Field(
        30.0, gt=0, description="dead letters 'rising': more in this window than the last"
    )
    bucket_s: float = Field(1.0, gt=0, description="timeline resolution: one min/max/mean point per bucket")
    timeline_s: float = Field(300.0, gt=0, description="timeline length kept per source")
    replay_s: float = Field(10.0, ge=0, description="verdicts re-read from the scores topic at start")
    alert_history_s: float = Field(6 * 3600.0, ge=0, description="alerts re-read from the alerts topic at start")
    max_alerts: int = Field(5000, ge=10, description="alerts kept in memory for the alert and incident pages")
    max_sources: int = Field(5000, ge=10, description="sources shown at most (dead letters name any source)")
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="addresses whose X-Forwarded-Proto/For are believed (a TLS proxy in front: its address or '*')",
    )
    update_interval_s: float = Field(0.5, gt=0, description="live pages get at most one update per interval")
    redis_poll_s: float = Field(2.0, gt=0, description="thresholds and open incidents re-read from Redis")
    workers: list[str] = Field(default_factory=list, description="extra worker host:port for /health and /metrics")

    @field_serializer("users", "token_hash", "session_secret", when_used="json")
    def _secrets_in_files(self, value: object, info: SerializationInfo) -> object:
        """Masked in dumps; revealed only in the settings file handed to a child process (context REVEAL_SECRETS)."""
        if isinstance(value, dict):
            return {k: _secret_json(v, info) for k, v in value.items()}
        return _secret_json(value, info) if isinstance(value, SecretStr | str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINEWATCH_",
        env_nested_delimiter="__",
        extra="ignore",
        toml_file=None,
        hide_input_in_errors=True,  # an error about one section must not print another's password
    )

    app_id: str = "linewatch"
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    batching: BatchSettings = BatchSettings()
    recovery: RecoverySettings = RecoverySettings()
    thresholds: ThresholdSettings = ThresholdSettings()
    incidents: IncidentSettings = IncidentSettings()
    stack: StackSettings = StackSettings()
    retrain: RetrainSettings = RetrainSettings()
    console: ConsoleSettings = ConsoleSettings()
    limits: LimitSettings = LimitSettings()
    camera: CameraSettings = CameraSettings()
    routes: list[Route] = [Route(pattern="*", model="sensors")]
    image_routes: list[Route] = [Route(pattern="*", model="camera")]
    registry_dir: Path = Path("registry")
    state_dir: Path = Path(".state")
    device: str | None = None
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of a worker's inference thread (image models; None: torch's default). "
        "CPU vector models run on the event loop with one thread",
    )
    worker_processes: int | None = Field(
        None,
        ge=1,
        description="inference processes per `linewatch worker` (None: one per physical core, capped by partitions)",
    )
    web_port: int = 6066
    metrics_host: str = Field("127.0.0.1", description="/metrics and /health bind here; 0.0.0.0 to scrape remotely")
    metrics_port: int = Field(9108, ge=-1, description="first port tried; 0: any free port; -1: no HTTP server")
    metrics_port_range: int = Field(
        16, ge=1, description="workers on one host take the first free of metrics_port .. +range-1"
    )
    max_image_bytes: int = 8 * 1024 * 1024
    claim_check_dirs: list[Path] = Field(default_factory=list, description="file:// URIs must lie under one")

    kafka_bootstrap: str | None = Field(None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP"), exclude=True)
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"), exclude=True)

    def model_post_init(self, __context: object) -> None:
        if self.kafka_bootstrap:
            self.kafka.bootstrap = self.kafka_bootstrap
        if self.redis_url:
            self.redis.url = self.redis_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            JsonConfigSettingsSource(settings_cls),
        )


def load_settings(config_file: str | Path | None = None, **overrides: object) -> Settings:
    """Settings from defaults < TOML or JSON file (`config_file` or $LINEWATCH_CONFIG) < environment < overrides."""
    path = config_file or os.environ.get("LINEWATCH_CONFIG")
    if not path:
        return Settings(**overrides)  # type: ignore[arg-type]  # (overrides are validated by pydantic)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")

    source = "json_file" if str(path).endswith(".json") else "toml_file"

    config: dict[str, Any] = {**Settings.model_config, source: path}

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**config)  # type: ignore[typeddict-item]

    return FileSettings(**overrides)  # type: ignore[arg-type]
