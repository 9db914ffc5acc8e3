"""The migration guide's example apps, each served by a real uvicorn over real sockets.

``examples/migration/step*.py`` walk from a dict-of-WebSockets manager to budget_ws
(``docs/how-to/migrate.md``); steps 1 to 3 share ``budget.py``. Steps 0, 1 and 3 run in
this process (uvicorn on an ephemeral loopback port, both of its WebSocket
implementations); step 2, which is step 1's app with ``BUDGET_WS_BACKEND`` set to Redis,
runs as two uvicorn processes on one Redis. Clients are ``websockets`` clients: without a
subprotocol, as the original page's ``budget_socket.js``, or with ``budget-ws.v1``, as the
bundled browser client. The guide's code excerpts are checked against the files.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from tests.support.servers import bound_port, free_port, running_uvicorn, stop, wait_listening
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from budget_ws.adapters import client_url

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "examples" / "migration"
GUIDE = ROOT / "docs" / "how-to" / "migrate.md"
REDIS_URL = "redis://127.0.0.1:6379/0"
SUBPROTOCOL = "budget-ws.v1"

# What each request of the session below makes the server send, byte for byte: the
# original app's messages (Starlette's send_json), which compatibility mode must repeat.
EXPECTED_MESSAGES = [
    '{"event":"budget_fact_created","data":{"id":7,"amount":"12.50"}}',
    '{"event":"budget_fact_updated","data":{"id":7,"amount":"13.75"}}',
    '{"event":"article_updated","data":{"id":3,"name":"Épicerie"}}',
    '{"event":"budget_fact_deleted","data":{"id":7}}',
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn, the websockets client and redis-py run on asyncio only


@pytest.fixture(params=["websockets-sansio", "wsproto"])
def ws_implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def load(step: str, monkeypatch: pytest.MonkeyPatch, backend: str | None = None) -> ModuleType:
    """Import ``examples/migration/<step>.py`` afresh: a new manager for each test.

    ``backend`` is ``BUDGET_WS_BACKEND``; None leaves the step's default. What the steps
    share, ``budget.py`` with the events, is imported once, as uvicorn would: ``budget``.
    """
    if backend is None:
        monkeypatch.delenv("BUDGET_WS_BACKEND", raising=False)
    else:
        monkeypatch.setenv("BUDGET_WS_BACKEND", backend)
    monkeypatch.syspath_prepend(str(MIGRATION))
    name = f"migration_{step}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, MIGRATION / f"{step}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # pydantic resolves annotations there
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def serve(app: Any, ws: str, ping: float = 20.0) -> AsyncIterator[str]:
    """Run uvicorn in this process on an ephemeral port; yield ``host:port``.

    ``ping`` is uvicorn's ``--ws-ping-interval`` and ``--ws-ping-timeout`` (20 s each by
    default): its protocol-level pings are what checks a compatibility client's link.
    """
    async with running_uvicorn(
        app,
        ws=ws,
        ws_per_message_deflate=False,
        ws_ping_interval=ping,
        ws_ping_timeout=ping,
        lifespan="on",
    ) as server:
        yield f"127.0.0.1:{bound_port(server)}"


async def wait_until(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``seconds`` of polls."""
    for _ in range(int(seconds / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{condition.__name__} still false after {seconds} s")


def page_socket(address: str, budget_id: int, **options: Any) -> Any:
    """A client as the original page opens it: no subprotocol, the budget in a cookie."""
    return connect(
        f"ws://{address}/ws",
        additional_headers={"Cookie": f"budget_id={budget_id}"},
        compression=None,
        proxy=None,
        **options,
    )


async def messages(socket: ClientConnection, count: int) -> list[str]:
    with anyio.fail_after(5):
        return [str(await socket.recv()) for _ in range(count)]


class Frames:
    """The frames of a ``budget-ws.v1`` connection, one at a time."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.pending: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while not self.pending:
                message = str(await self.socket.recv())
                self.pending.extend(json.loads(line) for line in message.split("\n") if line)
        return self.pending.pop(0)


async def post_session(http: httpx.AsyncClient, base: str, budget_id: int) -> None:
    """One of each change the app publishes, as ``EXPECTED_MESSAGES`` lists them."""
    budget = f"{base}/budgets/{budget_id}"
    for path, body in [
        ("/facts", {"id": 7, "amount": "12.50"}),
        ("/facts/7", {"amount": "13.75"}),
        ("/articles/3", {"name": "Épicerie"}),
        ("/facts/7/delete", None),
    ]:
        response = await http.post(budget + path, json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


# Steps 0 and 1: the original page, on the original server and in compatibility mode -----


@pytest.mark.parametrize("step", ["step0_original", "step1_compat"])
async def test_the_original_page_gets_the_same_messages_from_steps_0_and_1(
    step: str, ws_implementation: str, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    module = load(step, monkeypatch)
    async with serve(module.app, ws_implementation) as address:
        base = f"http://{address}"
        # The page is served unchanged, byte for byte.
        for path, name in [("/", "index.html"), ("/budget_socket.js", "budget_socket.js")]:
            response = await http.get(base + path)
            assert response.status_code == 200
            assert response.content == (MIGRATION / "original" / name).read_bytes()

        async with page_socket(address, 2) as mine, page_socket(address, 1) as other:
            assert mine.subprotocol is None

            async def both_listening() -> bool:
                if step == "step0_original":
                    active = module.manager.active
                    return len(active.get(1, [])) == 1 and len(active.get(2, [])) == 1
                # The page says nothing when it is subscribed; the app's endpoint does.
                response = await http.get(f"{base}/compat-clients")
                return bool(response.json() == {"budget:1": 1, "budget:2": 1})

            await wait_until(both_listening)
            await post_session(http, base, budget_id=2)
            assert await messages(mine, 4) == EXPECTED_MESSAGES

            # The other budget's page heard none of it: its first message is its own.
            await http.post(f"{base}/budgets/1/facts/8/delete")
            assert await messages(other, 1) == ['{"event":"budget_fact_deleted","data":{"id":8}}']


async def test_step1_serves_budget_ws_clients_on_the_same_endpoint_under_authorize(
    ws_implementation: str, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    module = load("step1_compat", monkeypatch)
    async with (
        serve(module.app, ws_implementation) as address,
        page_socket(address, 2, subprotocols=[Subprotocol(SUBPROTOCOL)]) as socket,
    ):
        assert socket.subprotocol == SUBPROTOCOL
        frames = Frames(socket)
        assert (await frames.next())["op"] == "welcome"
        # The compatibility hook is not asked for it: it subscribes itself, under authorize.
        await socket.send(json.dumps({"op": "subscribe", "topic": "budget:1", "id": 1}))
        assert (await frames.next())["code"] == "forbidden"
        await socket.send(json.dumps({"op": "subscribe", "topic": "budget:2", "id": 2}))
        assert (await frames.next())["op"] == "subscribed"
        assert (await http.get(f"http://{address}/compat-clients")).json() == {}

        await http.post(f"http://{address}/budgets/2/facts/7/delete")
        event = await frames.next()
        assert (event["event"], event["data"], event["offset"]) == (
            "budget_fact_deleted",
            {"id": 7},
            1,
        )


# The uvicorn releases from which each implementation pings (docs/how-to/migrate.md).
PINGS_FROM = {"websockets-sansio": (0, 44), "wsproto": (0, 46)}
UVICORN = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])


async def test_step1_only_uvicorns_ping_checks_the_original_pages_link(
    ws_implementation: str, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    # A page that answers the protocol's pings stays. One that stops is closed within
    # --ws-ping-interval plus --ws-ping-timeout where uvicorn pings, and stays where not.
    module = load("step1_compat", monkeypatch)
    async with serve(module.app, ws_implementation, ping=0.3) as address:

        async def listed() -> dict[str, int]:
            response = await http.get(f"http://{address}/compat-clients")
            return dict(response.json())

        async with page_socket(address, 1, ping_interval=None) as socket:

            async def listening() -> bool:
                return await listed() == {"budget:1": 1}

            await wait_until(listening)
            await asyncio.sleep(0.7)  # two pings, answered by the client library
            assert await listed() == {"budget:1": 1}

            socket.transport.pause_reading()  # a link gone silent: no pong any more

            async def gone() -> bool:
                return await listed() == {}

            if PINGS_FROM[ws_implementation] <= UVICORN:
                await wait_until(gone, seconds=3)
            else:
                await asyncio.sleep(1.2)  # four ping periods: nothing noticed
                assert await listed() == {"budget:1": 1}
            socket.transport.abort()  # not reading, it would wait for the closing handshake


# Step 2: two workers on one Redis --------------------------------------------------------


class Worker:
    """``BUDGET_WS_BACKEND=<backend_url> uvicorn step1_compat:app`` in a process of its own,
    on a free loopback port."""

    def __init__(self, backend_url: str) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", "step1_compat:app", "--app-dir", str(MIGRATION),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            "--ws-per-message-deflate", "false", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
        environment = {**os.environ, "BUDGET_WS_BACKEND": backend_url}
        self.process = subprocess.Popen(command, env=environment)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of the test's own in the Redis on 127.0.0.1; its keys go afterwards."""
    redis = pytest.importorskip("redis")
    prefix = f"test-migration-{uuid.uuid4().hex[:12]}"
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as admin:
            admin.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on 127.0.0.1:6379: {exc}")
    yield prefix
    with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as admin:
        keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            admin.delete(*keys)


@pytest.fixture
def workers(redis_prefix: str) -> Iterator[tuple[Worker, Worker]]:
    backend_url = f"{REDIS_URL}?key_prefix={redis_prefix}"
    started: list[Worker] = []
    try:
        for _ in range(2):
            started.append(Worker(backend_url))
        for worker in started:
            wait_listening(worker.port, worker.process)
        yield started[0], started[1]
    finally:
        for worker in started:
            stop(worker.process)


@pytest.mark.redis
async def test_step2_a_change_on_one_worker_reaches_the_pages_on_both(
    workers: tuple[Worker, Worker], http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers
    async with page_socket(worker_a.address, 2) as on_a, page_socket(worker_b.address, 2) as on_b:
        for worker in workers:

            async def listening(worker: Worker = worker) -> bool:
                response = await http.get(f"http://{worker.address}/compat-clients")
                return bool(response.json() == {"budget:2": 1})

            await wait_until(listening, seconds=10)

        await post_session(http, f"http://{worker_a.address}", budget_id=2)
        assert await messages(on_a, 4) == EXPECTED_MESSAGES
        assert await messages(on_b, 4) == EXPECTED_MESSAGES

        await http.post(f"http://{worker_b.address}/budgets/2/facts/9/delete")
        for socket in (on_a, on_b):
            assert await messages(socket, 1) == ['{"event":"budget_fact_deleted","data":{"id":9}}']


# Step 3: the bundled client, compatibility off -------------------------------------------


async def test_step3_the_new_page_subscribes_from_its_position_and_old_pages_are_refused(
    ws_implementation: str, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    module = load("step3_client", monkeypatch, backend="memory://")
    async with serve(module.app, ws_implementation) as address:
        base = f"http://{address}"
        page = (await http.get(base + "/", headers={"Cookie": "budget_id=2"})).text
        assert f'import {{ connect }} from "{client_url()}";' in page
        assert (await http.get(base + client_url())).status_code == 200
        rendered = re.search(r'socket\.subscribe\("(budget:2)", \{ position: (\{.*?\}) \}\);', page)
        assert rendered is not None, page
        position = json.loads(rendered.group(2))
        assert position["offset"] == 0

        # Published after the page was rendered, before its client subscribed.
        await http.post(f"{base}/budgets/2/facts", json={"id": 7, "amount": "12.50"})

        protocols = [Subprotocol(SUBPROTOCOL)]
        async with page_socket(address, 2, subprotocols=protocols) as socket:
            frames = Frames(socket)
            assert (await frames.next())["op"] == "welcome"
            request = {"op": "subscribe", "topic": "budget:2", "id": 1, "position": position}
            await socket.send(json.dumps(request))
            subscribed = await frames.next()
            assert subscribed["op"] == "subscribed"
            assert subscribed["recovered"] is True
            replayed = await frames.next()
            assert replayed["event"] == "budget_fact_created"
            assert replayed["data"] == {"id": 7, "amount": "12.50"}
            assert (replayed["topic"], replayed["offset"]) == ("budget:2", 1)

            await http.post(f"{base}/budgets/2/articles/3", json={"name": "Épicerie"})
            live = await frames.next()
            assert (live["event"], live["data"], live["offset"]) == (
                "article_updated",
                {"id": 3, "name": "Épicerie"},
                2,
            )
            assert live["epoch"] == replayed["epoch"] == position["epoch"]

        # A tab still on the old page is refused. A browser sends Origin: it gets a close
        # code (its budget_socket.js ignores it and retries every 3 s until reloaded).
        origin = Origin(base)
        async with page_socket(address, 2, origin=origin) as old_page:
            with pytest.raises(ConnectionClosed) as closed:
                await messages(old_page, 1)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1002
            assert closed.value.rcvd.reason == "subprotocol budget-ws.v1 required"
        with pytest.raises(InvalidStatus) as refused:
            async with page_socket(address, 2):
                pass
        assert refused.value.response.status_code == 400


# The guide and the files --------------------------------------------------------------


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """``(title, code)`` of each fenced block that has a title, its indentation removed."""
    pattern = re.compile(r'^( *)```\w+ title="([^"]+)"\n(.*?)^\1```$', re.S | re.M)
    return [
        (match.group(2), re.sub(f"(?m)^{match.group(1)}", "", match.group(3)))
        for match in pattern.finditer(markdown)
    ]


ELISION = re.compile(r"^\s*(#|//|<!--) …( -->)?$")


def test_every_excerpt_in_the_guide_is_in_its_example_file() -> None:
    """A block titled with a file of examples/migration quotes it: each run of lines
    between elisions (``# …``, ``// …``, ``<!-- … -->``) appears in the file as it is.
    A block titled otherwise (a hand-written "before") names no file at all."""
    checked = 0
    for title, code in code_blocks(GUIDE.read_text(encoding="utf-8")):
        named = re.search(r"\b(budget\.py|step\d_\w+\.py|(?:original|step3)/[\w.]+)$", title)
        if named is None:
            assert not re.search(r"\.(py|js|html)\b", title), f"{title}: names no example file"
            continue
        text = (MIGRATION / named.group(1)).read_text(encoding="utf-8")
        run: list[str] = []
        for line in [*code.splitlines(), "# …"]:
            if ELISION.match(line):
                if run:
                    excerpt = "\n".join(run) + "\n"
                    assert excerpt in text, f"{title}: not in the file:\n{excerpt}"
                    checked += 1
                run = []
            else:
                run.append(line)
    assert checked >= 10, f"only {checked} excerpts found in {GUIDE.name}"
