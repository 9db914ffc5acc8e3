"""A Redis master, two replicas and three Sentinels of the test's own, on loopback ports.

Two replicas, so that after a failover the new master has one: a publish waiting for a
replica's acknowledgement (``wait_replicas=1``) can then succeed again.

Every process is started here and killed by its own handle at teardown; each keeps its
files (the Sentinels rewrite their configuration) in a temporary directory of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from tests.support.servers import free_ports, wait_listening

MASTER_NAME = "budget"
"""The name the Sentinels monitor the master under."""

DOWN_AFTER_MS = 500
"""A killed master counts as down after this long, so a failover test stays fast."""


class SentinelGroup:
    """``redis-server`` processes: a master, two replicas, and three ``--sentinel`` ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ports = free_ports(6)
        self.data_ports = ports[:3]
        """The first master's port, then the replicas' (a failover changes the roles)."""
        self.sentinel_ports = ports[3:]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def url(self, query: str = "") -> str:
        """A ``redis+sentinel://`` URL naming every Sentinel of the group."""
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{sentinels}/{MASTER_NAME}/0" + (f"?{query}" if query else "")

    def start(self) -> None:
        master, *replicas = self.data_ports
        self._start_data_node(master)
        for replica in replicas:
            self._start_data_node(replica, "--replicaof", "127.0.0.1", str(master))
        for port in self.sentinel_ports:
            self._start_sentinel(port, master)
        self.wait_ready()

    def _start_data_node(self, port: int, *extra: str) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir()
        self._spawn(
            port,
            # A replica that must copy the new master in full (it had more data than the
            # promoted one) gets it at once, not after Redis's 5 s wait for others.
            ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0", "--dir", str(directory), *extra],
        )  # fmt: skip

    def _start_sentinel(self, port: int, master: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 2000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self._spawn(port, [str(config), "--sentinel"])

    def _spawn(self, port: int, arguments: list[str]) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is needed (apt-get install redis-server)"
        process = subprocess.Popen([executable, *arguments], stdout=subprocess.DEVNULL)
        self.processes[port] = process
        wait_listening(port, process)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the replicas are in sync and every Sentinel knows the others."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return
            time.sleep(0.05)
        raise RuntimeError("the Sentinel group did not come up")

    def _ready(self) -> bool:
        master = self.master_port()
        replicas = len(self.data_ports) - 1
        with redis.Redis(port=master, socket_timeout=1) as client:
            info = client.info("replication")
        links = [info.get(f"slave{number}", {}) for number in range(replicas)]
        if any(link.get("state") != "online" for link in links):
            return False
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1) as sentinel:
                state = sentinel.sentinel_master(MASTER_NAME)
            if state["port"] != master or state["num-other-sentinels"] < 2:
                return False
            if state["num-slaves"] < replicas:
                return False
        return True

    def master_port(self) -> int:
        """The master's port, as the first Sentinel answering sees it."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    host_and_port = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.ConnectionError:
                continue
            return int(host_and_port[1])
        raise RuntimeError("no Sentinel answers")

    def failover(self) -> int:
        """``SENTINEL FAILOVER``: promote a replica; returns the old master's port."""
        old = self.master_port()
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=2) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return old

    def kill_master(self) -> int:
        """SIGKILL the master, as a crashed host; returns its port."""
        old = self.master_port()
        self.kill(old)
        return old

    def kill(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.kill()
            process.wait()

    def wait_master_moved(self, old: int, timeout: float = 15.0) -> int:
        """Wait until every Sentinel names another master than ``old``; returns its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = set()
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    ports.add(int(sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
            if ports and old not in ports and len(ports) == 1:
                return ports.pop()
            time.sleep(0.05)
        raise RuntimeError(f"the Sentinels did not move the master away from port {old}")

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


@contextmanager
def sentinel_group(directory: Path) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup`, every process killed when the block ends."""
    group = SentinelGroup(directory)
    try:
        group.start()
        yield group
    finally:
        group.stop()
