"""A real Redis Cluster on loopback for tests and benchmarks: 3 masters and 3 replicas, no Docker.

Six `redis-server --cluster-enabled yes` processes (AOF on, their own dirs under `state_dir`), joined by
`redis-cli --cluster create ... --cluster-replicas 1`. `kill_master(slot)` SIGKILLs the master serving a
slot so a test can watch its replica take over (`cluster-node-timeout` is short for that reason).
`Access(password=..., tls=deploy.secured.write_tls(...))` makes every node demand AUTH and speak only TLS
(clients, replication and the cluster bus).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploy.secured import TlsFiles

NODE_TIMEOUT_MS = 2000


class ClusterError(RuntimeError):
    """The cluster (or the sentinel group, deploy/redis_sentinel.py) could not be formed; the message says why."""


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too, so both stay below 65536."""
    for port in random.sample(range(20000, 30000), 500):
        if port not in taken and bindable(port) and bindable(port + 10000):
            return port
    raise ClusterError("no free port pair (p, p + 10000) in 20000-40000 for a Redis Cluster node")


@dataclass(frozen=True)
class Access:
    """What the servers demand, and redis-cli presents: a password (requirepass, masterauth) and TLS only."""

    password: str | None = None
    tls: TlsFiles | None = None

    def server_args(self, port: int) -> list[str]:
        args = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        if self.tls is None:
            return [*args, "--port", str(port)]
        return [*args, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no", "--tls-replication", "yes", "--tls-cluster", "yes"]  # fmt: skip

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "REDISCLI_AUTH": self.password} if self.password else dict(os.environ)


OPEN = Access()


def redis_cli(port: int, *args: str, access: Access = OPEN, timeout: float = 10.0) -> str:
    """`redis-cli -p port args...` on loopback; its stdout, stripped."""
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *access.cli_args(), *args],
                         capture_output=True, text=True, timeout=timeout, env=access.cli_env())  # fmt: skip
    return out.stdout.strip()


def require_redis_tools() -> None:
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise ClusterError(f"`{tool}` not found on PATH; apt-get install redis-server redis-tools")


def spawn_redis(port: int, node_dir: Path, *args: str, access: Access = OPEN) -> subprocess.Popen:
    """A `redis-server` on loopback `port` (AOF on, RDB off, its log and files in `node_dir`), in its own session."""
    node_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["redis-server", "--bind", "127.0.0.1", *access.server_args(port), "--dir", str(node_dir), "--appendonly",
           "yes", "--save", "", "--protected-mode", "yes", "--logfile", str(node_dir / "log"), *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_pong(ports: list[int], deadline: float, where: Path, access: Access = OPEN) -> None:
    for port in ports:
        while redis_cli(port, "PING", access=access) != "PONG":
            if time.monotonic() > deadline:
                raise ClusterError(f"redis on port {port} did not answer PING; see the logs under {where}")
            time.sleep(0.1)


def _info(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def wait_replicated(master: int, access: Access = OPEN, timeout_s: float = 10.0) -> None:
    """Until every replica of the master on port `master` holds all writes made to it so far, so that killing
    the master loses none of them (replication is asynchronous: later writes may still be lost)."""
    info = _info(redis_cli(master, "INFO", "replication", access=access))
    target = int(info["master_repl_offset"])
    replicas = [int(dict(kv.split("=", 1) for kv in v.split(","))["port"]) for k, v in info.items()
                if k.startswith("slave") and k[5:].isdigit()]  # fmt: skip
    if not replicas:
        raise ClusterError(f"the master on port {master} has no replica")
    deadline = time.monotonic() + timeout_s

    def lowest() -> int:
        return min(int(_info(redis_cli(r, "INFO", "replication", access=access)).get("slave_repl_offset", -1))
                   for r in replicas)  # fmt: skip

    while lowest() < target:
        if time.monotonic() > deadline:
            raise ClusterError(f"replicas {replicas} of port {master} did not reach offset {target} in {timeout_s} s")
        time.sleep(0.05)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class RedisCluster:
    state_dir: Path
    access: Access = OPEN
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """A seed URL for clients; they discover the other nodes."""
        return f"{'rediss' if self.access.tls else 'redis'}://127.0.0.1:{self.ports[0]}/0"

    def up(self, nodes: int = 6, timeout_s: float = 60.0) -> RedisCluster:
        require_redis_tools()
        if not self.ports:
            for _ in range(nodes):
                self.ports.append(_free_cluster_port(set(self.ports)))
        for port in self.ports:
            self._start(port)
        deadline = time.monotonic() + timeout_s
        wait_pong(self.ports, deadline, self.state_dir, self.access)
        addrs = [f"127.0.0.1:{p}" for p in self.ports]
        created = subprocess.run(["redis-cli", *self.access.cli_args(), "--cluster", "create", *addrs,
                                  "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=60, env=self.access.cli_env())  # fmt: skip
        if created.returncode != 0:
            raise ClusterError(f"redis-cli --cluster create failed: {created.stdout[-800:]} {created.stderr[-400:]}")
        self.wait_ok(deadline - time.monotonic())
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok with all 16384 slots served, and every replica is in
        sync with its master (a replica that never synced cannot take over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = [p for p in self.ports if self.procs[p].poll() is None]
            infos = [self.cli(p, "CLUSTER", "INFO") for p in live]
            links = [self.cli(p, "INFO", "replication") for p in live]
            synced = all("role:master" in r or "master_link_status:up" in r for r in links)
            if infos and synced and all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster not ok after {timeout_s:.0f} s: {infos[:1]}")
            time.sleep(0.2)

    def masters(self) -> list[int]:
        """Ports of the live masters that serve slots now."""
        lines = [line.split() for line in self.cli(self._live_port(), "CLUSTER", "NODES").splitlines()]
        return sorted(int(p[1].split("@")[0].rsplit(":", 1)[1]) for p in lines
                      if "master" in p[2] and "fail" not in p[2] and len(p) > 8)  # fmt: skip

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` now."""
        for line in self.cli(self._live_port(), "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and "disconnected" not in parts[7:8]:
                for rng in parts[8:]:
                    lo, _, hi = rng.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise ClusterError(f"no master serves slot {slot}")

    def kill_master(self, slot: int) -> int:
        """SIGKILL the master of `slot`; returns its port. Its replica is promoted after NODE_TIMEOUT_MS."""
        port = self.master_of_slot(slot)
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait()
        return port

    def wait_failover(self, slot: int, old_master: int, timeout_s: float = 30.0) -> float:
        """Seconds until a live node masters `slot` again and the cluster is ok."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(ClusterError):
                if self.master_of_slot(slot) != old_master:
                    self.wait_ok(max(1.0, timeout_s - (time.monotonic() - started)))
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ClusterError(f"no replica took over slot {slot} from port {old_master} in {timeout_s:.0f} s")
            time.sleep(0.1)

    def down(self) -> None:
        stop_all(list(self.procs.values()))

    def cli(self, port: int, *args: str) -> str:
        return redis_cli(port, *args, access=self.access)

    def _live_port(self) -> int:
        return next(p for p in self.ports if self.procs[p].poll() is None)

    def _dir(self, port: int) -> Path:
        return Path(self.state_dir) / f"node-{port}"

    def _start(self, port: int) -> None:
        self.procs[port] = spawn_redis(port, self._dir(port), "--cluster-enabled", "yes", "--cluster-config-file",
                                       "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                                       access=self.access)  # fmt: skip
