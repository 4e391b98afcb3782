"""A real Kafka (KRaft) cluster of one or more nodes and Redis on loopback, without Docker.

Kafka's broker jars come from Maven Central through `mvn` into a cache outside the repository and
are reused; each node runs as `java -cp libs/* kafka.Kafka server.properties`, broker and controller
in one process. One node is `kafka` (state in `<state_dir>/kafka`); a cluster's nodes are `kafka-1`,
`kafka-2`, ... with their own ports and log dirs, their controllers forming the quorum, and topics
replicated three times with two copies in sync (`TopicSettings.replication`). Redis is the OS
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
from typing import Any

HERE = Path(__file__).resolve().parent
SERVICES = ("kafka", "redis")  # "kafka" stands for every node; a node's own name (`kafka-2`) for that one
PORT_STEP = 10  # node i listens on kafka_port and controller_port + PORT_STEP * (i - 1) unless told otherwise


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


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node: broker and controller in one JVM, with its own ports, log dir, pid and log file."""

    node_id: int
    name: str
    port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_nodes(
    brokers: int, kafka_port: int, controller_port: int, other_ports: tuple[tuple[int, int], ...] = ()
) -> list[KafkaNode]:
    """The nodes of a cluster of `brokers`: node 1 on the given ports, the others on `other_ports` or spaced
    PORT_STEP apart. A lone node is named `kafka`, as before clusters existed, so its state dir stays valid.

    >>> [(n.name, n.port, n.controller_port) for n in kafka_nodes(3, 19092, 19093)]
    [('kafka-1', 19092, 19093), ('kafka-2', 19102, 19103), ('kafka-3', 19112, 19113)]
    """
    if brokers == 1:
        return [KafkaNode(1, "kafka", kafka_port, controller_port)]
    if other_ports and len(other_ports) != brokers - 1:
        raise StackError(f"expected the ports of {brokers - 1} more node(s), got {len(other_ports)}")
    spaced = [(kafka_port + PORT_STEP * i, controller_port + PORT_STEP * i) for i in range(1, brokers)]
    ports = [(kafka_port, controller_port), *(other_ports or spaced)]
    return [KafkaNode(i, f"kafka-{i}", port, ctl) for i, (port, ctl) in enumerate(ports, start=1)]


def quorum_voters(nodes: list[KafkaNode]) -> str:
    """`controller.quorum.voters`: every node's controller, the same string on every node.

    >>> quorum_voters(kafka_nodes(2, 9092, 9093))
    '1@127.0.0.1:9093,2@127.0.0.1:9103'
    """
    return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)


def server_properties(node: KafkaNode, nodes: list[KafkaNode], log_dir: Path) -> str:
    """A node's server.properties: its ports and log dir, the quorum, and replication defaults for the cluster's
    size (internal topics and auto-created ones get what the project's own topics get)."""
    from stream_app.settings import TopicSettings

    factor, min_insync = TopicSettings().replication(len(nodes))
    return Template((HERE / "server.properties.template").read_text()).substitute(
        node_id=node.node_id, quorum_voters=quorum_voters(nodes), kafka_port=node.port,
        controller_port=node.controller_port, log_dir=log_dir, replication_factor=factor,
        min_insync_replicas=min_insync,
    )  # fmt: skip


def formatted_brokers(state_dir: Path) -> int | None:
    """How many nodes the KRaft log dirs under `state_dir` were formatted for (None: none formatted yet)."""
    if (state_dir / "kafka" / "data" / "meta.properties").is_file():
        return 1
    return len(list(state_dir.glob("kafka-*/data/meta.properties"))) or None


@dataclass
class LocalStack:
    state_dir: Path
    cache_dir: Path
    kafka_port: int = 19092
    controller_port: int = 19093
    redis_port: int = 16379
    kafka_version: str = "3.9.1"
    kafka_heap_mb: int = 512  # per node
    ready_timeout_s: float = 90.0
    brokers: int = 1
    other_node_ports: tuple[tuple[int, int], ...] = ()  # (kafka, controller) of nodes 2..n; () spaces them out
    # Options for a secured variant (deploy/secured.py): appended to the generated configs (later keys win),
    # extra `StorageTool format` arguments (SCRAM users), and what health probes need to connect.
    kafka_extra_properties: str = ""
    kafka_format_args: tuple[str, ...] = ()
    redis_extra_config: str = ""
    kafka_client: dict = field(default_factory=dict)
    redis_client: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings, brokers: int | None = None) -> LocalStack:  # settings: stream_app Settings
        """The stack of `settings`; `brokers` asked for, else as many as the state dir was formatted for, else
        `stack.brokers`: `stack status` and `down` find every node of a cluster `up --brokers 3` started."""
        st = settings.stack
        state_dir = Path(settings.state_dir).resolve()
        return cls(
            state_dir=state_dir,
            cache_dir=Path(st.cache_dir).expanduser(),
            kafka_port=st.kafka_port,
            controller_port=st.controller_port,
            redis_port=st.redis_port,
            kafka_version=st.kafka_version,
            kafka_heap_mb=st.kafka_heap_mb,
            ready_timeout_s=st.ready_timeout_s,
            brokers=brokers or formatted_brokers(state_dir) or st.brokers,
        )

    @classmethod
    def on_free_ports(cls, state_dir: Path, cache_dir: Path, brokers: int = 1, **options: Any) -> LocalStack:
        """A stack whose every port is one nothing listens on now: tests and benchmarks beside other stacks."""
        ports = free_ports(2 * brokers + 1)
        nodes = list(zip(ports[0 : 2 * brokers : 2], ports[1 : 2 * brokers : 2], strict=True))
        return cls(
            state_dir=state_dir, cache_dir=cache_dir, kafka_port=nodes[0][0], controller_port=nodes[0][1],
            redis_port=ports[-1], brokers=brokers, other_node_ports=tuple(nodes[1:]), **options,
        )  # fmt: skip

    # ---- paths -------------------------------------------------------------------------
    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def nodes(self) -> list[KafkaNode]:
        return kafka_nodes(self.brokers, self.kafka_port, self.controller_port, self.other_node_ports)

    def node(self, node_id: int) -> KafkaNode:
        """The node with KRaft id `node_id` (a partition leader's id names its node)."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def node_dir(self, node: KafkaNode) -> Path:
        return self.state_dir / node.name

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def bootstrap(self) -> str:
        """Every node's address: clients bootstrap through any node that is up."""
        return ",".join(n.address for n in self.nodes)

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
        found = formatted_brokers(self.state_dir)
        if found is not None and found != self.brokers:
            raise StackError(
                f"{self.state_dir} holds a {found}-node Kafka cluster, not {self.brokers}: keep {found} "
                f"(--brokers {found}), or `stack down` and remove its kafka* directories, or use another state_dir"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if "redis" in services and not self._alive("redis"):
            self._start_redis()
        starting = [n for n in self._kafka_nodes(services) if not self._alive(n.name)]
        if starting:
            self.fetch_jars()
            cluster_id = self._cluster_id()
            for node in starting:
                self._start_kafka(node, cluster_id)
        self._wait_ready(services)
        if self._kafka_nodes(services):
            _warm_group_coordinator(self.bootstrap, self.ready_timeout_s, **self.kafka_client)
        return self.status()

    def down(self, timeout_s: float = 30.0, services: tuple[str, ...] = SERVICES) -> None:
        """Stop the servers (SIGTERM, then SIGKILL), leaving no process behind."""
        names = [n.name for n in self._kafka_nodes(services)] + (["redis"] if "redis" in services else [])
        _stop_groups([pid for pid in map(self._pid, names) if pid is not None and pid_alive(pid)], timeout_s)
        for name in names:
            self._pid_file(name).unlink(missing_ok=True)

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to a server's process group (`kafka`: every node): fault drills (SIGKILL, SIGSTOP/SIGCONT)."""
        for target in self._names(name):
            pid = self._pid(target)
            if pid is None or not pid_alive(pid):
                raise StackError(f"{target} is not running (pid file {self._pid_file(target)})")
            os.killpg(pid, sig)

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        """SIGKILL a server (`kafka`: every node) and wait until it is gone; `restart(name)` starts it again on
        the same data dir."""
        for target in self._names(name):
            pid = self._pid(target)
            self.signal(target, signal.SIGKILL)
            assert pid is not None  # signal() raised otherwise
            deadline = time.monotonic() + timeout_s
            while pid_alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            if pid_alive(pid):
                raise StackError(f"{target} (pid {pid}) survived SIGKILL for {timeout_s:.0f} s")
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

    def restart(self, name: str) -> list[ServerStatus]:
        """Start a stopped server again on its existing data (Kafka's log dir, Redis's AOF) and wait for it."""
        return self.up((name,))

    def status(self) -> list[ServerStatus]:
        """One row per Kafka node (healthy: listed among the cluster's live brokers) and one for Redis."""
        live, kafka_detail = _kafka_brokers(self.bootstrap, **self.kafka_client)
        redis_ok, redis_detail = _redis_healthy(self.redis_url, **self.redis_client)
        rows = []
        for n in self.nodes:
            detail = kafka_detail if n.node_id in live or not live else f"not a live broker; {kafka_detail}"
            rows.append(
                ServerStatus(n.name, self._pid(n.name), self._alive(n.name), n.node_id in live, n.address, detail)
            )
        redis = ServerStatus("redis", self._pid("redis"), self._alive("redis"), redis_ok, self.redis_url, redis_detail)
        return [*rows, redis]

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

    def _start_kafka(self, node: KafkaNode, cluster_id: str) -> None:
        java = _require("java", "Java 17 is needed to run Kafka: apt-get install openjdk-17-jre-headless")
        where = "" if node.node_id == 1 else f" (node {node.node_id}: the setting + {PORT_STEP * (node.node_id - 1)})"
        _check_port_free(node.port, f"{node.name}", f"LINEWATCH_STACK__KAFKA_PORT{where}")
        _check_port_free(node.controller_port, f"{node.name}'s controller", f"LINEWATCH_STACK__CONTROLLER_PORT{where}")
        data_dir = self.node_dir(node) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        props = self.node_dir(node) / "server.properties"
        props.write_text(server_properties(node, self.nodes, data_dir) + self.kafka_extra_properties)
        classpath = f"{self.libs_dir}/*"
        jvm = [java, f"-Xms{min(256, self.kafka_heap_mb)}m", f"-Xmx{self.kafka_heap_mb}m", "-XX:+UseSerialGC",
               "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
               f"-Dlog4j.configuration=file:{HERE / 'log4j.properties'}", "-cp", classpath]  # fmt: skip
        if not (data_dir / "meta.properties").exists():
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted",
                 *self.kafka_format_args],
                capture_output=True, text=True,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise StackError(f"formatting the KRaft log dir failed:\n{_tail(fmt.stdout + fmt.stderr)}")
        self._spawn(node.name, [*jvm, "kafka.Kafka", str(props)])

    def _cluster_id(self) -> str:
        """The id the nodes' log dirs were formatted with (all nodes share it), or a new one."""
        for meta in self.state_dir.glob("kafka*/data/meta.properties"):
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        return _kraft_cluster_id()

    def _kafka_nodes(self, services: tuple[str, ...]) -> list[KafkaNode]:
        """The nodes `services` names: all for "kafka", else those named by their own name."""
        return [n for n in self.nodes if "kafka" in services or n.name in services]

    def _names(self, name: str) -> list[str]:
        """A server name as processes: "kafka" is every node of a cluster."""
        return [n.name for n in self.nodes] if name == "kafka" else [name]

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self._log_file(name), "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.state_dir)  # fmt: skip
        log.close()
        self._pid_file(name).write_text(str(proc.pid))

    def _wait_ready(self, services: tuple[str, ...]) -> None:
        """Until Redis answers and every node is a live broker of the cluster (registered and caught up)."""
        deadline = time.monotonic() + self.ready_timeout_s
        node_ids = {n.name: n.node_id for n in self._kafka_nodes(services)}
        pending = (["redis"] if "redis" in services else []) + list(node_ids)
        details: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for name in pending:
                if not self._alive(name):
                    raise StackError(f"{name} exited during start-up; {self._log_file(name)} ends with:\n"
                                     f"{_tail(self._log_file(name).read_text(errors='replace'))}")  # fmt: skip
            ready = set()
            if "redis" in pending:
                ok, details["redis"] = _redis_healthy(self.redis_url, **self.redis_client)
                ready |= {"redis"} if ok else set()
            if node_ids.keys() & set(pending):  # one metadata request answers for every node
                live, detail = _kafka_brokers(self.bootstrap, **self.kafka_client)
                details.update(dict.fromkeys(node_ids, detail))
                ready |= {name for name, node_id in node_ids.items() if node_id in live}
            pending = [name for name in pending if name not in ready]
            if pending:
                time.sleep(0.5)
        if pending:
            name = pending[0]
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


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nothing listens on now (all held open while picking, so none repeats)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    """A port nothing listens on now, so concurrent stacks, workers and tests on one machine get their own."""
    return free_ports(1)[0]


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


def _stop_groups(pids: list[int], timeout_s: float) -> None:
    """SIGTERM every process group at once, SIGKILL what is left after `timeout_s`. At once, because a cluster's
    nodes stopped one by one wait on a quorum that is leaving: the last one never gets its controlled shutdown."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
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


def _kafka_brokers(bootstrap: str, **client_kwargs) -> tuple[set[int], str]:
    """The ids of the cluster's live brokers from a real metadata request through aiokafka (not a port probe),
    and a line saying what came back; no ids when no node answered."""
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are expected while starting

    async def probe() -> tuple[set[int], str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **client_kwargs)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            ids = {b["node_id"] for b in cluster["brokers"]}
            return ids, f"{len(ids)} live broker(s)"
        finally:
            await admin.close()

    try:
        return asyncio.run(asyncio.wait_for(probe(), timeout=5))
    except Exception as exc:
        return set(), f"{type(exc).__name__}: {exc}"


WARMUP_ATTEMPT_S = 20.0  # one group-join attempt of the warm-up


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
            # The warm-up topic is auto-created by a metadata request. On a fresh multi-broker cluster one
            # made before every broker has registered fails (too few brokers for the replication factor), and
            # the client would not ask again for 5 minutes: no assignment, a stack that never gets ready.
            metadata_max_age_ms=1000,
            **client_kwargs,
        )
        try:  # an attempt abandoned mid-start still closes its client
            await consumer.start()
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            await consumer.commit()
        finally:
            await consumer.stop()

    async def until_joined() -> None:  # a stuck attempt is abandoned for a fresh client
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await asyncio.wait_for(join(), timeout=min(WARMUP_ATTEMPT_S, deadline - time.monotonic()))
            except Exception:
                if time.monotonic() >= deadline - 1:
                    raise

    try:
        asyncio.run(until_joined())
    except Exception as exc:
        raise StackError(f"Kafka answers metadata but consumer groups do not work yet: {exc!r}") from exc


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
