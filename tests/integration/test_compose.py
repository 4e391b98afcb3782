"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here) against the real CLI and
settings; the commands the compose services run are then run on the local stack."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml
from redis.connection import parse_url
from typer.testing import CliRunner

from stream_app.cli import COMMAND_MODULES, app
from stream_app.settings import Settings, StackSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LINEWATCH_SERVICES = [name for name, svc in SERVICES.items() if "linewatch" in str(svc.get("image", ""))]
CLI = typer.main.get_command(app)


# What a user sets before `docker compose up` (compose refuses to start without it).
USER_ENV = {"REDIS_PASSWORD": "s3cret-pw"}


class MissingVariable(ValueError):
    """Compose's `${VAR:?message}` with VAR unset or empty: `docker compose up` stops with the message."""


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}` / `${VAR:?error}` / `${VAR}` with `env` set (default USER_ENV); `$$` is `$`."""
    env = USER_ENV if env is None else env

    def required(m: re.Match) -> str:
        if not env.get(m.group(1)):
            raise MissingVariable(f"{m.group(1)}: {m.group(2)}")
        return env[m.group(1)]

    value = re.sub(r"(?<!\$)\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)
    value = re.sub(r"(?<!\$)\$\{(\w+):\?([^}]*)\}", required, value)
    value = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), value)
    return value.replace("$$", "$")


def resolve(tokens: list[str]) -> tuple[list[str], object | None]:
    """The CLI path named by a service's command tokens and the click command it reaches (None: unknown)."""
    command = CLI
    path: list[str] = []
    for token in tokens:
        if token.startswith("-") or not hasattr(command, "commands"):  # a group has sub-commands
            break
        sub = command.commands.get(token)
        if sub is None:
            return [*path, token], None
        command, path = sub, [*path, token]
    return path, command


def env_of(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in SERVICES[service].get("environment", {}).items()}


def test_services_and_profiles():
    assert {"kafka", "redis", "worker", "retrain", "simulator", "alerts"} <= set(SERVICES)
    for name in ("kafka", "redis", "worker", "retrain"):
        assert "profiles" not in SERVICES[name], f"{name} must start with a plain `docker compose up`"
    assert SERVICES["simulator"]["profiles"] == ["demo"]
    assert SERVICES["alerts"]["profiles"] == ["demo"]
    assert set(LINEWATCH_SERVICES) == {"worker", "worker-gpu", "retrain", "simulator", "alerts", "console"}


def test_kafka_is_a_single_kraft_node_with_a_volume_and_the_local_port():
    kafka = SERVICES["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER" in env["KAFKA_LISTENERS"] and env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "KRaft needs a base64 UUID cluster id"
    assert f"kafka-data:{env['KAFKA_LOG_DIRS']}" in kafka["volumes"]
    assert env["KAFKA_MESSAGE_MAX_BYTES"] >= Settings().kafka.max_message_bytes
    host_port = StackSettings().kafka_port
    assert f"127.0.0.1:{host_port}:{host_port}" in kafka["ports"]
    assert f"127.0.0.1:{host_port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]  # what the services use
    assert SERVICES["kafka"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "chown" in " ".join(SERVICES["kafka-init"]["entrypoint"])
    assert "kafka-broker-api-versions" in " ".join(kafka["healthcheck"]["test"])


def test_redis_persists_and_always_requires_a_password():
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    command = interpolate(" ".join(redis["command"]))
    assert "--appendonly yes" in command and "--dir /data" in command
    assert '--requirepass "$REDIS_PASSWORD"' in command
    assert "redis-data:/data" in redis["volumes"]
    assert f"127.0.0.1:{StackSettings().redis_port}:6379" in redis["ports"]
    env = env_of("redis")
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == USER_ENV["REDIS_PASSWORD"]  # the healthcheck's AUTH
    url = env_of("worker")["LINEWATCH_REDIS__URL"]
    assert parse_url(url)["password"] == USER_ENV["REDIS_PASSWORD"] and parse_url(url)["host"] == "redis"


@pytest.mark.parametrize("service", ["redis", "worker", "retrain"])
def test_compose_refuses_to_start_without_a_redis_password(service):
    for value in SERVICES[service].get("environment", {}).values():
        if "REDIS_PASSWORD" in str(value):
            with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
                interpolate(str(value), env={})
            with pytest.raises(MissingVariable):
                interpolate(str(value), env={"REDIS_PASSWORD": ""})  # `:?` refuses empty too
            return
    raise AssertionError(f"{service} does not use REDIS_PASSWORD")


def test_every_published_port_binds_loopback_only():
    published = [(name, str(p)) for name, svc in SERVICES.items() for p in svc.get("ports", [])]
    assert published
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every host interface"


def test_the_compose_redis_command_really_refuses_clients_without_the_password(tmp_path):
    """The service's command and healthcheck run as written (data dir and port swapped) on a real redis-server."""
    import os
    import socket
    import time

    import redis as redis_py

    svc = SERVICES["redis"]
    script = interpolate(svc["command"][-1]).replace("--dir /data", f"--dir {tmp_path}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script += f" --port {port} --bind 127.0.0.1 --save ''"
    env = {**os.environ, **env_of("redis")}
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        anonymous = redis_py.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                anonymous.ping()
                raise AssertionError("Redis answered without a password")
            except redis_py.AuthenticationError:
                break  # NOAUTH: up, and refusing
            except redis_py.ConnectionError:
                assert time.monotonic() < deadline, "the compose Redis command did not start"
                time.sleep(0.2)
        assert redis_py.Redis(port=port, password=USER_ENV["REDIS_PASSWORD"]).ping()
        health = svc["healthcheck"]["test"][1].replace("redis-cli", f"redis-cli -p {port}")
        assert subprocess.run(["sh", "-c", health], env=env, timeout=20).returncode == 0
        assert subprocess.run(["sh", "-c", health], env={**env, "REDISCLI_AUTH": "wrong"}, timeout=20).returncode != 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def test_named_volumes_are_declared_and_used():
    declared = set(COMPOSE["volumes"])
    used = {
        v.split(":")[0] for svc in SERVICES.values() for v in svc.get("volumes", []) if not v.startswith((".", "/"))
    }
    assert used == declared
    assert {"kafka-data", "redis-data", "registry"} <= declared
    for name in ("worker", "retrain"):
        assert "registry:/data/registry" in SERVICES[name]["volumes"]  # the agent publishes, workers load


def test_linewatch_services_wait_for_healthy_servers():
    for name in LINEWATCH_SERVICES:
        deps = SERVICES[name]["depends_on"]
        assert deps["kafka"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
    for name in ("kafka", "redis"):
        assert SERVICES[name]["healthcheck"]["test"]


def test_gpu_worker_reserves_a_gpu_under_a_profile():
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["command"][0] == "worker" and "cuda" in gpu["command"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]


@pytest.mark.parametrize("service", LINEWATCH_SERVICES)
def test_service_commands_are_real_cli_commands(service):
    tokens = [str(t) for t in SERVICES[service]["command"]]
    path, command = resolve(tokens)
    if command is None:
        # not registered yet (written in parallel): it must at least be one of the CLI's command modules
        assert path[0] in COMMAND_MODULES, f"{service}: `{' '.join(tokens)}` is no linewatch command"
        return
    if hasattr(command, "commands"):  # a group: the service must name one of its sub-commands
        assert command.invoke_without_command, f"{service}: `linewatch {' '.join(path)}` needs a sub-command"
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app", *path, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    used = {t for t in tokens if t.startswith("--")}
    assert used <= known, f"{service}: options {sorted(used - known)} do not exist on `linewatch {' '.join(path)}`"


def _check_settings_names(names: set[str]) -> None:
    for name in names:
        model: type = Settings
        parts = name.removeprefix("LINEWATCH_").lower().split("__")
        for i, part in enumerate(parts):
            fields = model.model_fields
            assert part in fields, f"{name}: no settings field {part!r}"
            if i < len(parts) - 1:
                model = fields[part].annotation


def test_environment_names_match_real_settings_fields():
    names = {k for svc in LINEWATCH_SERVICES for k in SERVICES[svc].get("environment", {})}
    names |= set(re.findall(r"LINEWATCH_\w+", COMPOSE_TEXT)) - {"LINEWATCH_IMAGE", "LINEWATCH_GPU_IMAGE"}
    names |= set(re.findall(r"LINEWATCH_\w+(?==)", DOCKERFILE))
    assert "LINEWATCH_KAFKA__BOOTSTRAP" in names and "LINEWATCH_KAFKA__SASL_MECHANISM" in names
    _check_settings_names(names)


def test_compose_environment_loads_into_settings(monkeypatch):
    for var in ("KAFKA_BOOTSTRAP", "REDIS_URL", "LINEWATCH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env_of("worker").items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka.bootstrap == "kafka:9092" and settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.redis.url == f"redis://:{USER_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert settings.registry_dir == Path("/data/registry") and settings.claim_check_dirs == [Path("/data/frames")]
    assert settings.topics.partitions == 4 and settings.metrics_port == 9108


def test_dockerfile_builds_the_package_and_runs_as_a_user():
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.M)
    assert re.search(r"^RUN pip install .*\s\.$", DOCKERFILE, re.M)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["linewatch"\]', DOCKERFILE, re.M)
    copied = [src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for src in line.split()[:-1]]
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    assert {"stream_app", "models", "deploy", "pyproject.toml", "README.md"} <= set(copied)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".git", ".state", ".venv"} <= ignored and not ignored & set(copied)
    for name in LINEWATCH_SERVICES:
        assert SERVICES[name]["build"] == "." or SERVICES[name]["build"]["context"] == "."


@pytest.mark.integration
def test_compose_simulator_and_alerts_commands_run_on_the_local_stack(make_settings, tmp_path):
    """The demo profile's commands, as written (the simulator shortened to 1 s), against the real stack."""
    settings = make_settings()
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    tokens = [str(t) for t in SERVICES["simulator"]["command"]]
    tokens[tokens.index("--duration") + 1] = "1"
    result = CliRunner().invoke(app, ["--config", str(config), *tokens])
    assert result.exit_code == 0, result.output
    assert re.search(r"vectors\s*│\s*200\b", result.output), result.output

    from stream_app.alerts.tail import tail

    tokens = [str(t) for t in SERVICES["alerts"]["command"]]
    result = CliRunner().invoke(app, ["--config", str(config), *tokens, "--idle-timeout", "1", "--from-beginning"])
    assert result.exit_code == 0, result.output  # no alerts without a worker: it waits, then exits cleanly
    assert asyncio.run(tail(settings, idle_timeout=0.5, emit=lambda _: None)) == 0


# ---------------------------------------------------------------- monitoring profile (Prometheus, Grafana, console)

DEPLOY = ROOT / "deploy"


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts (./ sources)."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        src, dst = volume.split(":")[:2]
        if src.startswith("./"):
            out[dst] = ROOT / src
    return out


def test_monitoring_profile_runs_prometheus_grafana_and_the_console_on_loopback(monkeypatch):
    for name in ("prometheus", "grafana", "console"):
        assert SERVICES[name]["profiles"] == ["monitoring"], name
        for port in SERVICES[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert SERVICES["prometheus"]["image"].startswith("prom/prometheus:v")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")
    console = SERVICES["console"]
    assert console["command"][:1] == ["console"] and "--host" in console["command"]
    assert "registry:/data/registry" in console["volumes"]  # promote/rollback write the pointer there
    assert env_of("console")["LINEWATCH_CONSOLE__WORKERS"] == '["worker:9108"]'
    for var in ("KAFKA_BOOTSTRAP", "REDIS_URL", "LINEWATCH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env_of("console").items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.console.users == {} and settings.console.workers == ["worker:9108"]


def test_prometheus_scrapes_the_workers_metrics_port():
    mounts = _mounts("prometheus")
    config_path = SERVICES["prometheus"]["command"][0].split("=", 1)[1]
    config = yaml.safe_load(mounts[config_path].read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "linewatch-worker"]
    (sd,) = job["dns_sd_configs"]
    assert "worker" in sd["names"] and set(sd["names"]) <= set(SERVICES)
    assert sd["port"] == int(env_of("worker")["LINEWATCH_METRICS_PORT"]) == Settings().metrics_port
    assert any(str(p).endswith(":9108") for p in SERVICES["worker"]["ports"])
    assert env_of("worker")["LINEWATCH_METRICS_HOST"] == "0.0.0.0"  # inside the container, or nothing can scrape


def test_grafana_is_provisioned_with_the_prometheus_source_and_the_dashboard():
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "linewatch.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "linewatch.json").is_file()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"]) and (dashboards / Path(home).name).is_file()


def test_dashboard_queries_only_metrics_the_workers_export():
    import json

    from stream_app.ops.metrics import WorkerMetrics

    exported = set()
    for family in WorkerMetrics().registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        exported |= {family.name + s for s in suffixes}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "linewatch.json").read_text())
    panels = dashboard["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\blinewatch_\w+", e)}
    assert used and used <= exported, f"not exported by workers: {sorted(used - exported)}"
    for required in ("linewatch_events_total", "linewatch_consumer_lag", "linewatch_e2e_latency_seconds_bucket",
                     "linewatch_deadletters_total", "linewatch_alerts_total"):  # fmt: skip
        assert required in used, required
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
