"""A real Sentinel-watched Redis on loopback for tests: 1 master, 1 replica and 3 sentinels, no Docker.

Same style as deploy/redis_cluster.py: `redis-server` processes with AOF on, their own dirs under `state_dir`;
each sentinel is `redis-server sentinel.conf --sentinel` (the `redis-sentinel` name is only a link to the
same binary). `kill_master()` SIGKILLs the master; the sentinels agree it is down after `DOWN_AFTER_MS` and
promote the replica, which `wait_failover` waits for. `access` gives the servers a password (not TLS here),
`sentinel_password` the sentinels one of their own.
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.redis_cluster import (
    OPEN,
    Access,
    ClusterError,
    bindable,
    redis_cli,
    require_redis_tools,
    spawn_redis,
    stop_all,
    wait_pong,
)

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
QUORUM = 2


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    for port in random.sample(range(30000, 40000), 500):
        if port not in ports and bindable(port):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise ClusterError(f"no {n} free ports in 30000-40000 for a sentinel group")


@dataclass
class RedisSentinel:
    state_dir: Path
    service: str = SERVICE
    access: Access = OPEN  # of the master and replica
    sentinel_password: str | None = None
    servers: list[int] = field(default_factory=list)  # [first master, first replica]
    sentinels: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        """host:port of each sentinel (`redis.sentinels`)."""
        return [f"127.0.0.1:{p}" for p in self.sentinels]

    def up(self, timeout_s: float = 60.0) -> RedisSentinel:
        require_redis_tools()
        if self.access.tls is not None:
            raise ClusterError("this sentinel group has no TLS; use deploy.redis_cluster for a TLS test")
        self.servers, self.sentinels = (ports := _free_ports(5))[:2], ports[2:]
        master, replica = self.servers
        self.procs[master] = spawn_redis(master, self._dir(master), access=self.access)
        self.procs[replica] = spawn_redis(replica, self._dir(replica), "--replicaof", "127.0.0.1", str(master),
                                          access=self.access)  # fmt: skip
        for port in self.sentinels:
            self._start_sentinel(port, master)
        deadline = time.monotonic() + timeout_s
        wait_pong(self.servers, deadline, self.state_dir, self.access)
        wait_pong(self.sentinels, deadline, self.state_dir, self._on_sentinels)
        self.wait_ready(deadline - time.monotonic())
        return self

    def master(self) -> int:
        """The master's port as the first live sentinel reports it."""
        for port in self.sentinels:
            if self.procs[port].poll() is None:
                reply = redis_cli(
                    port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, access=self._on_sentinels
                ).split()
                if len(reply) == 2 and reply[1].isdigit():
                    return int(reply[1])
        raise ClusterError(f"no sentinel knows a master for {self.service}")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel sees the master, its replica in sync and the two other sentinels (a failover
        needs a quorum of sentinels that know each other, and a replica that has synced)."""
        deadline = time.monotonic() + timeout_s
        others = str(len(self.sentinels) - 1)
        while True:
            views = [redis_cli(p, "SENTINEL", "MASTER", self.service, access=self._on_sentinels).splitlines()
                     for p in self.sentinels]  # fmt: skip
            fields = [dict(zip(v[::2], v[1::2], strict=False)) for v in views]
            ready = all(f.get("num-other-sentinels") == others and f.get("num-slaves") == "1" for f in fields)
            link = redis_cli(self.replica(), "INFO", "replication", access=self.access)
            if ready and "master_link_status:up" in link:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"sentinel group not ready after {timeout_s:.0f} s: {views[:1]} {link[:200]}")
            time.sleep(0.2)

    def replica(self) -> int:
        master = self.master()
        return next(p for p in self.servers if p != master)

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master()
        self.procs[port].kill()
        self.procs[port].wait()
        return port

    def wait_failover(self, old_master: int, timeout_s: float = 30.0) -> float:
        """Seconds until the sentinels name another master and it accepts writes."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            moved = all(self._names_new_master(p, old_master) for p in self.sentinels)
            if moved and "role:master" in redis_cli(self.master(), "INFO", "replication", access=self.access):
                return time.monotonic() - started
            time.sleep(0.1)
        raise ClusterError(f"no replica took over from port {old_master} in {timeout_s:.0f} s")

    @property
    def _on_sentinels(self) -> Access:
        return Access(password=self.sentinel_password)

    def down(self) -> None:
        stop_all(list(self.procs.values()))

    def _names_new_master(self, sentinel: int, old_master: int) -> bool:
        reply = redis_cli(
            sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, access=self._on_sentinels
        ).split()
        return len(reply) == 2 and reply[1] != str(old_master)

    def _dir(self, port: int) -> Path:
        return Path(self.state_dir) / f"node-{port}"

    def _start_sentinel(self, port: int, master: int) -> None:
        node = self._dir(port)
        node.mkdir(parents=True, exist_ok=True)
        conf = node / "sentinel.conf"  # a sentinel rewrites its own config file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {node}\nlogfile {node / 'log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {master} {QUORUM}\n"
            f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.service} 10000\n"
            + (f"sentinel auth-pass {self.service} {self.access.password}\n" if self.access.password else "")
            + (f"requirepass {pw}\nsentinel sentinel-pass {pw}\n" if (pw := self.sentinel_password) else "")
        )
        self.procs[port] = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
