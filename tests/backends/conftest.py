"""The backend contract suite runs against every backend, on every event loop it supports."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.support.postgres import migrated_schema, url_of
from tests.support.servers import free_port, wait_listening

from budget_ws import Backend, create_backend
from budget_ws.backends.redis import SHARDED_PUBSUB
from budget_ws.testing import RecordingListener

REDIS_URL = "redis://127.0.0.1:6379/0"

# backend -> the event loops it runs on (redis-py's client is asyncio-only). A cluster
# needs redis-py 8 (test_redis checks the refusal on older ones).
BACKENDS = {"memory": ("asyncio", "trio"), "redis": ("asyncio",), "postgres": ("asyncio",)}
if SHARDED_PUBSUB:
    BACKENDS["redis-cluster"] = ("asyncio",)
CASES = [(name, loop) for name, loops in BACKENDS.items() for loop in loops]


class RedisServer:
    """A redis-server of the test's own on a free loopback port."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self, directory: str | None = None) -> None:
        """Start; with a ``directory``, keep data there across restarts (append-only file)."""
        executable = shutil.which("redis-server")
        assert executable, "redis-server is needed (apt-get install redis-server)"
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", directory]
            if directory
            else ["--appendonly", "no"]
        )
        if self.password:
            persistence += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the server for the block: its sockets stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback ports of its own; yields a node's URL."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server, "redis-server is needed (apt-get install redis-server)"
    assert cli, "redis-cli is needed (apt-get install redis-tools)"
    ports: list[int] = []
    while len(ports) < 3:
        port = free_cluster_port()
        if port not in ports:
            ports.append(port)
    processes = []
    for port in ports:
        directory: Path = tmp_path_factory.mktemp(f"cluster-{port}")
        processes.append(
            subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(directory / "nodes.conf"), "--save", "",
                 "--appendonly", "no", "--dir", str(directory)],
                stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
    try:
        for port in ports:
            wait_listening(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the Redis cluster did not come up")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
            process.wait()


def backend_url(name: str, request: pytest.FixtureRequest) -> str:
    key_prefix = f"test-{uuid.uuid4().hex[:12]}"  # keeps runs and developers apart
    if name == "memory":
        return "memory://?history_size=100"
    if name == "redis":
        return f"{REDIS_URL}?history_size=100&key_prefix={key_prefix}"
    cluster: str = request.getfixturevalue("redis_cluster")
    return f"{cluster}?history_size=100&key_prefix={key_prefix}&cluster=1"


@pytest.fixture(params=CASES, ids=[f"{name}-{loop}" for name, loop in CASES])
def backend_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    name, loop = request.param
    return str(name), str(loop)


@pytest.fixture
def contract_anyio_backend(backend_case: tuple[str, str]) -> str:
    return backend_case[1]


@pytest.fixture
async def backend(
    backend_case: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[Backend]:
    if backend_case[0] == "postgres":
        async with migrated_schema() as schema:
            async with create_backend(url_of(schema, history_size=100)) as opened:
                yield opened
        return
    async with create_backend(backend_url(backend_case[0], request)) as opened:
        yield opened


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()
