"""A real single-node Kafka (KRaft) broker and Redis on loopback, without Docker.

Kafka's broker jars come from Maven Central through `mvn` into a cache outside the repository and
are reused; the broker runs as `java -cp libs/* kafka.Kafka server.properties`. Redis is the OS
package `redis-server` with AOF persistence. Every process gets its own session (setsid), a pid
file and a log file in the state directory, so `down` can stop exactly what `up` started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
SERVICES = ("kafka", "redis")


class StackError(RuntimeError):
    """The stack could not be brought up; the message says why and what to do."""


@dataclass(frozen=True)
class ServerStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    address: str
    detail: str = ""


@dataclass
class LocalStack:
    state_dir: Path
    cache_dir: Path
    kafka_port: int = 19092
    controller_port: int = 19093
    redis_port: int = 16379
    kafka_version: str = "3.9.1"
    kafka_heap_mb: int = 512
    ready_timeout_s: float = 90.0
    # Options for a secured variant (deploy/secured.py): appended to the generated configs (later keys win),
    # extra `StorageTool format` arguments (SCRAM users), and what health probes need to connect.
    kafka_extra_properties: str = ""
    kafka_format_args: tuple[str, ...] = ()
    redis_extra_config: str = ""
    kafka_client: dict = field(default_factory=dict)
    redis_client: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings) -> LocalStack:  # settings: stream_app.settings.Settings
        st = settings.stack
        return cls(
            state_dir=Path(settings.state_dir).resolve(),
            cache_dir=Path(st.cache_dir).expanduser(),
            kafka_port=st.kafka_port,
            controller_port=st.controller_port,
            redis_port=st.redis_port,
            kafka_version=st.kafka_version,
            kafka_heap_mb=st.kafka_heap_mb,
            ready_timeout_s=st.ready_timeout_s,
        )

    # ---- paths -------------------------------------------------------------------------
    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    # ---- jars --------------------------------------------------------------------------
    def jars_present(self) -> bool:
        return (self.libs_dir / f"kafka_2.13-{self.kafka_version}.jar").is_file()

    def fetch_jars(self) -> bool:
        """Fetch the broker classpath with Maven unless cached. Returns True if it downloaded."""
        if self.jars_present():
            return False
        _require("mvn", "Maven is needed to fetch Kafka's jars: apt-get install maven")
        _require("java", "Java 17 is needed to run Kafka: apt-get install openjdk-17-jre-headless")
        self.libs_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), "package",
            f"-Dlibs.dir={self.libs_dir}", f"-Dkafka.version={self.kafka_version}",
            f"-DbuildDirectory={self.cache_dir / 'mvn-build'}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.cache_dir)
        if proc.returncode != 0 or not self.jars_present():
            raise StackError(f"mvn could not fetch Kafka {self.kafka_version}:\n{_tail(proc.stdout + proc.stderr)}")
        return True

    # ---- lifecycle ---------------------------------------------------------------------
    def up(self, services: tuple[str, ...] = SERVICES) -> list[ServerStatus]:
        """Start whatever is not running yet; idempotent. Raises StackError with the reason."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if "redis" in services and not self._alive("redis"):
            self._start_redis()
        if "kafka" in services and not self._alive("kafka"):
            self.fetch_jars()
            self._start_kafka()
        self._wait_ready(services)
        if "kafka" in services:
            _warm_group_coordinator(self.bootstrap, self.ready_timeout_s, **self.kafka_client)
        return self.status()

    def down(self, timeout_s: float = 30.0, services: tuple[str, ...] = SERVICES) -> None:
        """Stop the servers (SIGTERM, then SIGKILL), leaving no process behind."""
        for name in services:
            pid = self._pid(name)
            if pid is not None and pid_alive(pid):
                _stop_group(pid, timeout_s)
            self._pid_file(name).unlink(missing_ok=True)

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to a server's process group: fault drills (SIGKILL, SIGSTOP/SIGCONT) on the real servers."""
        pid = self._pid(name)
        if pid is None or not pid_alive(pid):
            raise StackError(f"{name} is not running (pid file {self._pid_file(name)})")
        os.killpg(pid, sig)

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        """SIGKILL a server and wait until it is gone; `restart(name)` starts it again on the same data dir."""
        pid = self._pid(name)
        self.signal(name, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:  # type: ignore[arg-type]
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # type: ignore[arg-type]
            time.sleep(0.05)
        if pid_alive(pid):  # type: ignore[arg-type]
            raise StackError(f"{name} (pid {pid}) survived SIGKILL for {timeout_s:.0f} s")
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # type: ignore[arg-type]

    def restart(self, name: str) -> list[ServerStatus]:
        """Start a stopped server again on its existing data (Kafka's log dir, Redis's AOF) and wait for it."""
        return self.up((name,))

    def status(self) -> list[ServerStatus]:
        kafka_pid, redis_pid = self._pid("kafka"), self._pid("redis")
        kafka_ok, kafka_detail = _kafka_healthy(self.bootstrap, **self.kafka_client)
        redis_ok, redis_detail = _redis_healthy(self.redis_url, **self.redis_client)
        return [
            ServerStatus("kafka", kafka_pid, self._alive("kafka"), kafka_ok, self.bootstrap, kafka_detail),
            ServerStatus("redis", redis_pid, self._alive("redis"), redis_ok, self.redis_url, redis_detail),
        ]

    # ---- internals ---------------------------------------------------------------------
    def _start_redis(self) -> None:
        binary = _require("redis-server", "Redis is needed: apt-get install redis-server")
        _check_port_free(self.redis_port, "Redis", "LINEWATCH_STACK__REDIS_PORT")
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        conf = self.redis_dir / "redis.conf"
        conf.write_text(
            Template((HERE / "redis.conf.template").read_text()).substitute(
                redis_port=self.redis_port, redis_dir=self.redis_dir
            )
            + self.redis_extra_config
        )
        self._spawn("redis", [binary, str(conf)])

    def _start_kafka(self) -> None:
        java = _require("java", "Java 17 is needed to run Kafka: apt-get install openjdk-17-jre-headless")
        _check_port_free(self.kafka_port, "Kafka", "LINEWATCH_STACK__KAFKA_PORT")
        _check_port_free(self.controller_port, "Kafka's controller", "LINEWATCH_STACK__CONTROLLER_PORT")
        data_dir = self.kafka_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        props = self.kafka_dir / "server.properties"
        props.write_text(
            Template((HERE / "server.properties.template").read_text()).substitute(
                kafka_port=self.kafka_port, controller_port=self.controller_port, log_dir=data_dir
            )
            + self.kafka_extra_properties
        )
        classpath = f"{self.libs_dir}/*"
        jvm = [java, f"-Xms{min(256, self.kafka_heap_mb)}m", f"-Xmx{self.kafka_heap_mb}m", "-XX:+UseSerialGC",
               "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
               f"-Dlog4j.configuration=file:{HERE / 'log4j.properties'}", "-cp", classpath]  # fmt: skip
        if not (data_dir / "meta.properties").exists():
            cluster_id = _kraft_cluster_id()
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted",
                 *self.kafka_format_args],
                capture_output=True, text=True,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise StackError(f"formatting the KRaft log dir failed:\n{_tail(fmt.stdout + fmt.stderr)}")
        self._spawn("kafka", [*jvm, "kafka.Kafka", str(props)])

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self._log_file(name), "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.state_dir)  # fmt: skip
        log.close()
        self._pid_file(name).write_text(str(proc.pid))

    def _wait_ready(self, services: tuple[str, ...]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        checks = {
            "redis": lambda: _redis_healthy(self.redis_url, **self.redis_client),
            "kafka": lambda: _kafka_healthy(self.bootstrap, **self.kafka_client),
        }
        pending = {name: check for name, check in checks.items() if name in services}
        details: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for name, check in list(pending.items()):
                if not self._alive(name):
                    raise StackError(f"{name} exited during start-up; {self._log_file(name)} ends with:\n"
                                     f"{_tail(self._log_file(name).read_text(errors='replace'))}")  # fmt: skip
                ok, details[name] = check()
                if ok:
                    del pending[name]
            if pending:
                time.sleep(0.5)
        if pending:
            name = next(iter(pending))
            raise StackError(
                f"{name} not ready after {self.ready_timeout_s:.0f} s ({details.get(name)}); "
                f"{self._log_file(name)} ends with:\n{_tail(self._log_file(name).read_text(errors='replace'))}"
            )

    def _pid(self, name: str) -> int | None:
        try:
            return int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and pid_alive(pid)


# ---- helpers ---------------------------------------------------------------------------
def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise StackError(f"`{binary}` not found on PATH. {hint}")
    return path


def _check_port_free(port: int, what: str, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StackError(
                f"port {port} for {what} is in use by another process ({exc.strerror}); "
                f"stop it or choose another port with {setting}=<port>"
            ) from exc


def _kraft_cluster_id() -> str:
    """A base64url UUID without padding, like `StorageTool random-uuid`.

    Like Kafka's `Uuid.randomUuid`, ids starting with '-' are drawn again: the
    storage tool's argument parser would read one as an option (1 in 64 draws).
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _stop_group(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _redis_healthy(url: str, **client_kwargs) -> tuple[bool, str]:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **client_kwargs)
        try:
            client.ping()
            info = client.info("server")
            return True, f"redis {info.get('redis_version')}"
        finally:
            client.close()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _kafka_healthy(bootstrap: str, **client_kwargs) -> tuple[bool, str]:
    """A real metadata request through aiokafka, not a port probe."""
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are expected while starting

    async def probe() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **client_kwargs)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return f"{len(cluster['brokers'])} broker(s), controller {cluster['controller_id']}"
        finally:
            await admin.close()

    try:
        return True, asyncio.run(asyncio.wait_for(probe(), timeout=5))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _warm_group_coordinator(bootstrap: str, timeout_s: float, **client_kwargs) -> None:
    """Join a consumer group once so __consumer_offsets exists before the first real group needs it.

    On a fresh broker the first group join waits for that topic's creation, which stalls faust's
    first rebalance; doing it here makes "ready" mean consumer groups work.
    """
    import logging

    from aiokafka import AIOKafkaConsumer

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def join() -> None:
        consumer = AIOKafkaConsumer(
            "__linewatch_warmup",
            bootstrap_servers=bootstrap,
            group_id="linewatch-warmup",
            request_timeout_ms=5000,
            **client_kwargs,
        )
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            await consumer.commit()
        finally:
            await consumer.stop()

    try:
        asyncio.run(asyncio.wait_for(join(), timeout=timeout_s))
    except Exception as exc:
        raise StackError(f"Kafka answers metadata but consumer groups do not work yet: {exc!r}") from exc


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
