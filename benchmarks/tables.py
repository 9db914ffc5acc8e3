"""The tables of ``docs/performance.md``, rendered from results files only.

Each renderer takes the loaded ``Results`` and returns Markdown; none measures or
remembers anything, so a table can only say what a results file says. A run that did not
deliver everything shows its delivered share beside its figure instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RENDERERS", "Results"]

TIMES = "\N{MULTIPLICATION SIGN}"
KEPT_UP = 1.5
"""Events per message up to which a steady run counts as kept up with (nothing queued)."""
SETTINGS_ORDER = ("websockets-sansio", "wsproto", "websockets")
PEERS = ("budget_ws", "naive", "broadcaster", "websockets", "floor", "native", "picows")
"""The peers benchmark's contenders, in the order of the page's columns and rows; a table
has a column (row) only for those that its results have."""
NATIVE_PEERS = ("websockets", "budget_ws", "picows")
"""The contenders the native server's CPU per delivery is divided by, when it ran."""
NATIVE_IDLE_KIB = 16.0
"""The native server's target for memory per idle connection (``peers.NATIVE_IDLE_KIB``)."""
INSTRUMENTED = {"observed": "observed", "metrics": "metrics only", "tracing": "tracing only"}
"""The fan-out contenders with instrumentation on, by their name on the page."""
FANOUT_MODES = {"burst": "burst", "paced": "steady"}
"""``fanout.py``'s modes by their name on the page: paced is one event per message."""
ResultsFile = tuple[str, dict[str, Any]]
"""(file stem, its JSON)."""


@dataclass
class Results:
    """The results files a page is made from, by kind."""

    peers: list[ResultsFile] = field(default_factory=list)
    """``peers.py`` runs with fan-out, stalled or idle results (not the settings runs)."""
    settings: list[ResultsFile] = field(default_factory=list)
    """``peers.py`` idle-only runs under different server settings (``settings-*``)."""
    cross_worker: list[ResultsFile] = field(default_factory=list)
    hostile: list[ResultsFile] = field(default_factory=list)
    """``hostile.py`` runs: healthy clients quiet and beside hostile ones."""
    fanout: list[ResultsFile] = field(default_factory=list)
    """``fanout.py`` runs: in-memory fan-out in one process, budget_ws with and without
    metrics and tracing."""
    instructions: list[ResultsFile] = field(default_factory=list)
    """``instructions.py`` runs: the same fan-out's instructions per delivery (callgrind)."""
    postgres: list[ResultsFile] = field(default_factory=list)
    """``postgres.py`` runs: PostgreSQL against Redis and broadcaster's Postgres backend."""
    presence: list[ResultsFile] = field(default_factory=list)
    """``presence.py`` runs: presence, user streams and revocation on Redis."""

    def all(self) -> list[ResultsFile]:
        return [*self.peers, *self.settings, *self.cross_worker, *self.hostile, *self.fanout,
                *self.instructions, *self.postgres, *self.presence]  # fmt: skip

    def peer_results(self, scenario: str) -> list[tuple[str, dict[str, Any]]]:
        return [(stem, result) for stem, data in self.peers for result in data["results"]
                if result["scenario"] == scenario]  # fmt: skip

    def peer_loop(self, stem: str) -> tuple[str, list[str]]:
        """The loop of a peers file's servers without uvicorn (``--loop``) and those
        servers, when it is not asyncio's: ``("uvloop", ["native", ...])``; else ``("", [])``."""
        for name, data in self.peers:
            parameters = data["environment"]["parameters"]
            if name == stem and parameters.get("loop", "asyncio") != "asyncio":
                return parameters["loop"], list(parameters.get("loop_contenders", []))
        return "", []

    def loop_label(self, stem: str) -> str:
        """``""``, or e.g. ``"native, websockets, picows on uvloop"``."""
        loop, served = self.peer_loop(stem)
        return f"{', '.join(served)} on {loop}" if loop else ""


# --------------------------------------------------------------------------------------
# Formatting


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: int = 1) -> str:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "| " + " | ".join("---" if i < right else "---:" for i in range(len(header))) + " |"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _share(delivered: int, expected: int) -> str:
    return f"{100 * delivered / expected:.1f} %" if expected else "-"


def _cpu_cell(result: dict[str, Any] | None, key: str = "cpu_us_per_delivery") -> str:
    """CPU per delivery, with the delivered share when a run fell short."""
    if result is None:
        return "-"
    if result.get("error"):
        return "failed"
    value = _number(result.get(key))
    if result["expected"] and result["delivered"] != result["expected"]:
        value += f" ({_share(result['delivered'], result['expected'])} delivered)"
    return value


def _ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None,
           read: Callable[[dict[str, Any]], float | None]) -> str:  # fmt: skip
    a = read(ours) if ours else None
    b = read(theirs) if theirs else None
    return f"{a / b:.2f}" if a and b else "-"


def _per_message(result: dict[str, Any] | None) -> str:
    if not result or not result.get("messages"):
        return "-"
    return f"{result['delivered'] / result['messages']:.1f}"


def _mode(result: dict[str, Any], loop: str = "") -> str:
    mode = f"steady {result['rate']:g}/s" if result["rate"] else "burst"
    return f"{mode} ({loop})" if loop else mode


def _present(groups: Iterable[dict[str, Any]]) -> list[str]:
    """The peers contenders that any of ``groups`` (by contender) has, in page order."""
    groups = list(groups)
    return [name for name in PEERS if any(name in by for by in groups)]


def _cpu(result: dict[str, Any]) -> float | None:
    value: float | None = result.get("cpu_us_per_delivery")
    return value


def _p(result: dict[str, Any] | None, key: str) -> str:
    return _ms(result["latency_ms"].get(key)) if result and result.get("latency_ms") else "-"


def _commit(entry: dict[str, Any]) -> str:
    text = f"`{entry['commit']}`"
    return text + f" + uncommitted changes (digest `{entry['digest']}`)" if entry["dirty"] else text


def _bytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.0f} KiB"


# --------------------------------------------------------------------------------------
# Peers: fan-out


def _fanout_groups(results: Results) -> dict[tuple[str, int, int, float], dict[str, Any]]:
    groups: dict[tuple[str, int, int, float], dict[str, Any]] = {}
    for stem, result in results.peer_results("fanout"):
        key = (stem, result["connections"], result["payload_bytes"], result["rate"])
        groups.setdefault(key, {})[result["contender"]] = result
    return dict(sorted(groups.items(), key=lambda item: (item[0][1], item[0][2], item[0][3])))


def fanout(results: Results) -> str:
    groups = _fanout_groups(results)
    names = _present(groups.values())
    native = [peer for peer in NATIVE_PEERS if "native" in names and peer in names]
    header = ["connections", "event `data`", "scenario", *(f"{n} µs" for n in names),
              "÷ broadcaster", "÷ floor", "events per message (budget_ws)",
              *(f"native ÷ {peer}" for peer in native)]  # fmt: skip
    rows = []
    for (stem, connections, size, _), by in groups.items():
        ours = by.get("budget_ws")
        any_result = next(iter(by.values()))
        rows.append([
            f"{connections:,}", f"{size:,} B", _mode(any_result, results.loop_label(stem)),
            *(_cpu_cell(by.get(name)) for name in names),
            _ratio(ours, by.get("broadcaster"), _cpu), _ratio(ours, by.get("floor"), _cpu),
            _per_message(ours), *(_ratio(by.get("native"), by.get(peer), _cpu) for peer in native),
        ])  # fmt: skip
    return _table(header, rows, right=3)


def fanout_detail(results: Results) -> str:
    groups = _fanout_groups(results)
    if not groups:
        return "*(no fan-out results)*"
    largest = max(key[1] for key in groups)
    smallest = min(key[2] for key in groups if key[1] == largest)
    burst = next(by for key, by in groups.items()
                 if key[1:3] == (largest, smallest) and not key[3])  # fmt: skip
    steady = next((by for key, by in groups.items()
                   if key[1:3] == (largest, smallest) and key[3]), {})  # fmt: skip
    names = [name for name in PEERS if name in burst]
    rate = next(iter(steady.values()))["rate"] if steady else 0
    rows = [
        ["burst: wall time, first publish to last receipt",
         *(f"{burst[n]['wall_seconds']:.2f} s" for n in names)],
        ["burst: latency p50 / p99 (ms)",
         *(f"{_p(burst[n], 'p50')} / {_p(burst[n], 'p99')}" for n in names)],
        [f"steady {rate:g}/s: latency p50 / p99 (ms)",
         *(f"{_p(steady.get(n), 'p50')} / {_p(steady.get(n), 'p99')}" for n in names)],
        ["burst: memory it held (peak RSS growth)",
         *(f"{burst[n]['rss_growth_kib'] / 1024:.1f} MiB" for n in names)],
        ["burst: events per WebSocket message", *(_per_message(burst[n]) for n in names)],
        [f"steady {rate:g}/s: events per WebSocket message",
         *(_per_message(steady.get(n)) for n in names)],
    ]  # fmt: skip
    title = f"{largest:,} connections, {smallest:,} B"
    return _table([title, *names], rows)


def summary(results: Results) -> str:
    """Burst against steady, in numbers: where budget_ws's advantage comes from (and the
    native server's standing, when it ran). Runs with a server on another loop than
    asyncio's (``peers --loop``) are left out."""
    names = {"floor": "the floor's", "broadcaster": "broadcaster's",
             "websockets": "the `websockets` server's", "naive": "naive's"}  # fmt: skip
    native = {"websockets": "the `websockets` server's", "budget_ws": "budget_ws's on uvicorn",
              "picows": "picows'"}  # fmt: skip
    lines = _summary_lines(results, "budget_ws", "budget_ws's", names)
    lines += _summary_lines(results, "native", "the native server's", native)
    return "\n".join(lines) or "*(no fan-out results)*"


def _summary_lines(results: Results, ours_name: str, subject: str,
                   names: dict[str, str]) -> list[str]:  # fmt: skip
    spans: dict[tuple[str, str], list[float]] = {}
    per_message: dict[str, list[float]] = {}
    for (stem, _, _, rate), by in _fanout_groups(results).items():
        ours = by.get(ours_name)
        if not ours or not ours.get("cpu_us_per_delivery") or results.peer_loop(stem)[0]:
            continue
        carried = ours["delivered"] / ours["messages"] if ours.get("messages") else 1.0
        mode = "burst" if not rate else "steady" if carried <= KEPT_UP else "behind"
        for peer in names:
            theirs = by.get(peer)
            if theirs and theirs.get("cpu_us_per_delivery"):
                spans.setdefault((mode, peer), []).append(
                    ours["cpu_us_per_delivery"] / theirs["cpu_us_per_delivery"]
                )
        if ours.get("messages"):
            per_message.setdefault(mode, []).append(ours["delivered"] / ours["messages"])

    def span(values: list[float], digits: int = 2) -> str:
        low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
        return low if low == high else f"{low} to {high}"

    order = ("floor", "broadcaster", "websockets", "naive", "budget_ws", "picows")
    lines = []
    for mode, words in (
        ("burst", "In the bursts"),
        (
            "steady",
            f"At a steady rate the server kept up with (at most {KEPT_UP:g} events per message)",
        ),
        (
            "behind",
            f"At a steady rate the server fell behind (more than {KEPT_UP:g} events "
            "per message: events queued, and coalesced)",
        ),
    ):
        against = [f"{span(spans[mode, peer])} {TIMES} {names[peer]}" for peer in order
                   if peer in names and (mode, peer) in spans]  # fmt: skip
        if not against:
            continue
        text = f"- {words}, {subject} CPU per delivery was "
        text += ", ".join(against[:-1]) + (" and " if len(against) > 1 else "") + against[-1]
        if mode in per_message:
            text += f"; its messages carried {span(per_message[mode], 1)} events each"
        lines.append(text + ".")
    return lines


# --------------------------------------------------------------------------------------
# Peers: stalled clients and idle memory


def _ending(clients: list[dict[str, Any]]) -> str:
    """How the stalled clients' connections ended, grouped: code (reason), count."""
    if not clients:
        return "-"
    counts: dict[str, int] = {}
    for client in clients:
        if not client["closed"]:
            text = "still open"
        elif client["close_code"] is None:
            text = "dropped, no close frame"
        else:
            reason = f" ({client['close_reason']})" if client["close_reason"] else ""
            text = f"{client['close_code']}{reason}"
        counts[text] = counts.get(text, 0) + 1
    return "; ".join(f"{text} {TIMES} {count}" for text, count in counts.items())


def stalled(results: Results) -> str:
    by: dict[int, dict[str, dict[str, Any]]] = {}
    for _, result in results.peer_results("stalled"):
        by.setdefault(result["stalled"], {})[result["contender"]] = result
    alone, beside = by.get(0, {}), next((v for k, v in sorted(by.items()) if k), {})
    header = ["contender", "healthy only: delivered, p99", "with stalled: delivered, p99",
              "p99 change", "how the stalled connections ended", "a stalled client read",
              "server memory per stalled client"]  # fmt: skip
    rows = []
    for name in PEERS:
        a, b = alone.get(name), beside.get(name)
        if a is None and b is None:
            continue

        def cell(result: dict[str, Any] | None) -> str:
            if result is None:
                return "-"
            text = f"{result['delivered']:,}/{result['expected']:,}, {_p(result, 'p99')} ms"
            return text + (", publish blocked" if result.get("blocked") else "")

        change = "-"
        if a and b and a["latency_ms"].get("p99") and b["latency_ms"].get("p99"):
            change = f"{b['latency_ms']['p99'] - a['latency_ms']['p99']:+.1f} ms"
        clients = b["stalled_clients"] if b else []
        read = "-"
        if clients:
            most = max(clients, key=lambda client: client["bytes_read"])
            read = f"{_bytes(most['bytes_read'])}, {most['events']:,} events"
        held = "-"
        if a and b and b["stalled"]:
            held = f"{(b['rss_growth_kib'] - a['rss_growth_kib']) / b['stalled']:,.0f} KiB"
        rows.append([name, cell(a), cell(b), change, _ending(clients), read, held])
    return _table(header, rows, right=len(header))


def stalled_setup(results: Results) -> str:
    for stem, data in results.peers:
        parameters = data["environment"]["parameters"]
        if "stalled" in parameters.get("scenarios", []):
            return (
                f"`{stem}.json`: {parameters['stalled_connections']:,} healthy connections, "
                f"alone and beside {parameters['stalled_clients']} stalled ones "
                f"(`SO_RCVBUF` {parameters['stalled_receive_buffer']:,} B, they stop reading "
                f"once subscribed); {parameters['stalled_events']:,} events of 2,048 B at a "
                f"steady {parameters['stalled_rate']:g} events/s."
            )
    return "*(no stalled results)*"


def idle(results: Results) -> str:
    found = results.peer_results("idle")
    if not found:
        return "*(no idle results)*"
    # One column per contender and loop: a file whose servers ran on another loop
    # (``peers --loop uvloop``) adds columns "NAME (uvloop)"; the first file's result of
    # a column is kept.
    columns: dict[str, dict[str, Any]] = {}
    for stem, result in found:
        name = result["contender"]
        loop, served = results.peer_loop(stem)
        if name in served:
            name += f" ({loop})"
        columns.setdefault(name, result)
    by = {name: result for name, result in columns.items() if " (" not in name}
    names = [name for name in PEERS if name in by]
    names += [name for name in columns if name not in by]
    connections = next(iter(columns.values()))["connections"]
    rows = [
        ["server RSS per connection",
         *(f"{columns[n]['rss_idle_kib_per_connection']:.1f} KiB" for n in names)],
        ["connect + subscribe p99",
         *(f"{_ms(columns[n]['connect_ms'].get('p99'))} ms" for n in names)],
    ]  # fmt: skip
    if any(columns[n].get("handshake_ms") for n in names):
        rows.append(["connect + subscribe p99, the client's own wait left out",
                     *(f"{_ms(columns[n].get('handshake_ms', {}).get('p99'))} ms"
                       for n in names)])  # fmt: skip
    text = _table([f"{connections:,} idle connections", *names], rows)
    if "budget_ws" in by and "floor" in by:
        above = by["budget_ws"]["rss_idle_kib_per_connection"]
        above -= by["floor"]["rss_idle_kib_per_connection"]
        text += f"\n\nbudget_ws holds {above:.1f} KiB per idle connection more than the floor."
    if "native" in by:
        native = by["native"]
        text += (f"\n\nThe native server holds {native['rss_idle_kib_per_connection']:.1f} KiB "
                 f"per idle connection (target: at most {NATIVE_IDLE_KIB:g} KiB)")  # fmt: skip
        theirs = by.get("websockets")
        ours_p99 = native["connect_ms"].get("p99")
        theirs_p99 = theirs["connect_ms"].get("p99") if theirs else None
        if ours_p99 and theirs_p99:
            text += (f"; its connect + subscribe p99 is {ours_p99 / theirs_p99:.2f} {TIMES} "
                     f"the `websockets` server's (target: at most 1)")  # fmt: skip
        text += "."
    return text


def settings(results: Results) -> str:
    if not results.settings:
        return "*(no server-settings results)*"
    names = [name for name in PEERS if any(
        result["contender"] == name for _, data in results.settings for result in data["results"]
    )]  # fmt: skip
    rows = []
    connections = 0

    def order(item: ResultsFile) -> tuple[bool, int]:
        parameters = item[1]["environment"]["parameters"]
        known = parameters["ws"] in SETTINGS_ORDER
        return parameters["deflate"], SETTINGS_ORDER.index(parameters["ws"]) if known else 99

    for _, data in sorted(results.settings, key=order):
        parameters = data["environment"]["parameters"]
        by = {result["contender"]: result for result in data["results"]}
        connections = parameters["idle_connections"]
        label = f"`--ws {parameters['ws']}`, per-message deflate "
        label += "on" if parameters["deflate"] else "off"
        rows.append([label, *(f"{by[n]['rss_idle_kib_per_connection']:.1f} KiB" if n in by
                              else "-" for n in names)])  # fmt: skip
    return _table([f"{connections:,} idle connections", *names], rows)


# --------------------------------------------------------------------------------------
# Cross-worker on Redis


def redis(results: Results) -> str:
    if not results.cross_worker:
        return "*(no cross-worker results)*"
    _, data = results.cross_worker[-1]
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for run in data["runs"]:
        by.setdefault(run["scenario"], {})[run["contender"]] = run
    header = ["scenario", "budget_ws µs", "broadcaster (primed) µs", "÷", "budget_ws p50 / p99",
              "primed p50 / p99", "broadcaster as its README: delivered",
              "events per message (budget_ws)"]  # fmt: skip
    native = any("native" in runs for runs in by.values())
    if native:
        header += ["native µs", "native ÷ budget_ws", "native p50 / p99",
                   "native: clients per worker (one port)"]  # fmt: skip
    rows = []
    order = sorted(
        by, key=lambda name: (by[name].get("budget_ws", {}).get("mode") != "burst", name)
    )
    for scenario in order:
        runs = by[scenario]
        ours, primed, plain = runs.get("budget_ws"), runs.get("broadcaster-primed"), \
            runs.get("broadcaster")  # fmt: skip
        any_run = next(iter(runs.values()))
        if any_run["mode"] == "burst":
            pace = f"a burst of {any_run['published']:,} events"
        else:
            pace = f"{any_run['target_rate']:,g} events/s"
        mode = "" if scenario == any_run["mode"] else f" ({any_run['mode']})"
        what = f"{scenario}{mode}: {any_run['clients']:,} clients, {pace}"
        rows.append([
            what,
            _cpu_cell(ours, "worker_cpu_us_per_delivery"),
            _cpu_cell(primed, "worker_cpu_us_per_delivery"),
            _ratio(ours, primed, lambda run: run.get("worker_cpu_us_per_delivery")),
            f"{_p(ours, 'p50')} / {_p(ours, 'p99')} ms",
            f"{_p(primed, 'p50')} / {_p(primed, 'p99')} ms",
            _share(plain["delivered"], plain["expected"]) if plain else "-",
            _per_message(ours),
        ])  # fmt: skip
        if native:
            own = runs.get("native")
            split = own.get("connections_by_worker", {}) if own else {}
            rows[-1] += [
                _cpu_cell(own, "worker_cpu_us_per_delivery"),
                _ratio(own, ours, lambda run: run.get("worker_cpu_us_per_delivery")),
                f"{_p(own, 'p50')} / {_p(own, 'p99')} ms" if own else "-",
                " / ".join(f"{name} {count:,}" for name, count in split.items()) or "-",
            ]
    return _table(header, rows)


def redis_cpu(results: Results) -> str:
    if not results.cross_worker:
        return "*(no cross-worker results)*"
    _, data = results.cross_worker[-1]
    rows = []
    for run in data["runs"]:
        if run["contender"] == "broadcaster":
            continue
        share = run["cpu_percent"]
        mode = "" if run["scenario"] == run["mode"] else f" ({run['mode']})"
        rows.append([f"{run['scenario']}{mode}", run["contender"],
                     *(f"{share.get(key, 0):.0f} %" for key in
                       ("workers", "clients", "driver", "redis"))])  # fmt: skip
    source = {run.get("redis_cpu_source", "") for run in data["runs"]} - {""}
    text = _table(["scenario", "contender", "workers", "clients", "driver", "Redis"], rows, 2)
    cpus = data["environment"]["machine"]["cpus"]
    return text + (f"\n\nIn % of one core, out of {100 * cpus} %, during the publishing "
                   f"window; every process's CPU time from schedstat (Redis: "
                   f"{', '.join(sorted(source)) or '-'}).")  # fmt: skip


# --------------------------------------------------------------------------------------
# Hostile clients


def _hostile_files(results: Results) -> list[ResultsFile]:
    """The hostile runs, those before the fixes first (``hostile-before*``)."""
    return sorted(results.hostile, key=lambda item: ("before" not in item[0], item[0]))


def _library(env: dict[str, Any]) -> str:
    library = env["library"]
    checkout = library.get("checkout")
    if checkout and checkout != library["commit"]:
        return f"checkout `{checkout}`"
    return _commit(library)


ENDINGS = {"open": "open at the end, no close frame", "closed": "TCP closed, no close frame",
           "reset": "reset", "refused": "refused"}  # fmt: skip
"""A hostile connection that left no close frame to read, by how it ended."""


def _endings(attempts: list[dict[str, Any]]) -> str:
    """How the hostile connections ended: close code (reason) or state, with counts."""
    counts: dict[str, int] = {}
    for attempt in attempts:
        if attempt["close_code"] is not None:
            how = f"{attempt['close_code']} ({attempt['close_reason']})"
            if attempt["ended"] == "open":
                how += ", TCP still open"
        else:
            how = ENDINGS[attempt["ended"]]
        counts[how] = counts.get(how, 0) + 1
    return "; ".join(f"{how} {TIMES} {count}" for how, count in counts.items()) or "-"


def hostile(results: Results) -> str:
    files = _hostile_files(results)
    if not files:
        return "*(no hostile-client results)*"
    p = files[0][1]["environment"]["parameters"]
    text = (
        f"{p['healthy']} healthy clients on one topic, {p['rate']:g} events/s of "
        f"{p['payload_bytes']:,} B for {p['duration']:g} s, quiet and then beside "
        f"{p['hostile']} hostile clients (`SO_RCVBUF` {p['receive_buffer']:,} B, never "
        f"read) each sending {p['hostile_rate']:g} `note` frames/s of {p['frame_bytes']:,} B "
        f"with {p['keys']:,} unknown keys; a hostile client the server closed reconnects, "
        f"at most {p['max_connects']} connections each. Pass line: healthy p99 beside the "
        f"hostile clients at most {p['pass_line']:g} {TIMES} the quiet p99.\n\n"
    )  # fmt: skip
    latency, memory = [], []
    for stem, data in files:
        env, run = data["environment"], data["run"]
        name = f"`{stem}`"
        library = _library(env)
        ws = f"`{run['ws']}`"
        quiet, beside = run.get("quiet"), run.get("hostile")
        if not quiet or not beside:
            latency.append([name, library, ws, f"failed: {run['error']}", "", "", "", "", ""])
            continue
        p99 = data.get("ratios_hostile_to_quiet", {}).get("p99")
        met = next((v["met"] for v in data.get("verdicts", []) if "x" in v["check"]
                    and "quiet" in v["check"]), None)  # fmt: skip
        latency.append([
            name, library, ws,
            f"{quiet['delivered']:,}/{quiet['expected']:,}",
            f"{_p(quiet, 'p50')} / {_p(quiet, 'p99')} ms",
            f"{beside['delivered']:,}/{beside['expected']:,}",
            f"{_p(beside, 'p50')} / {_p(beside, 'p99')} ms",
            "-" if p99 is None else f"{p99:.2f}",
            "-" if met is None else "yes" if met else "**no**",
        ])  # fmt: skip
        attempts = [attempt for client in beside["hostile_clients"]
                    for attempt in client["attempts"]]  # fmt: skip
        rss = run["rss_kib"]
        memory.append([
            name,
            _endings(attempts),
            " → ".join(f"{rss[key] / 1024:,.0f}" for key in ("start", "peak", "end")) + " MiB",
            f"{quiet['cpu_percent']:.0f} % / {beside['cpu_percent']:.0f} %",
            f"{len(attempts)}",
            f"{sum(a['frames_sent'] for a in attempts):,}",
            f"{sum(a.get('errors_read', 0) for a in attempts):,}",
        ])  # fmt: skip
    text += _table(["results file", "library", "`--ws`", "quiet: delivered",
                    "quiet: p50 / p99", "hostile: delivered", "hostile: p50 / p99",
                    "p99 hostile ÷ quiet", "within the pass line"], latency, right=3)  # fmt: skip
    text += "\n\n" + _table(["results file", "how the hostile connections ended",
                              "server RSS start → peak → end", "server CPU quiet / hostile",
                              "hostile connections", "frames they sent",
                              "error answers read back"], memory, right=2)  # fmt: skip
    return text


# --------------------------------------------------------------------------------------
# In-memory fan-out: what metrics and tracing cost


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _spread(spread: dict[str, float] | None, complete: bool = True) -> str:
    """Median (min-max) of repeated measurements; an incomplete run says so."""
    if spread is None:
        return "-"
    text = f"{spread['median']:.2f} ({spread['low']:.2f}-{spread['high']:.2f})"
    return text if complete else text + " (incomplete)"


def _over(row: dict[str, Any] | None, key: str) -> str:
    """A contender's ``key`` ratio over budget_ws, as a percentage."""
    ratio = row.get(key) if row else None
    return "-" if ratio is None else f"{100 * (ratio - 1):+.1f} %"


def _by_scenario(rows: Iterable[dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """The rows of one results file grouped by N and mode, each group by contender."""
    by: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["connections"], row["mode"]), {})[row["contender"]] = row
    order = sorted(by, key=lambda key: (key[0], list(FANOUT_MODES).index(key[1])))
    return [(connections, mode, by[connections, mode]) for connections, mode in order]


def _target(observed: dict[str, Any] | None, key: str) -> tuple[str, str]:
    """The target observed is held to (its ``key`` entry), and whether it was met."""
    if not observed or key not in observed:
        return "-", "-"
    return (f"≤ +{100 * (observed[key] - 1):.0f} %",
            "yes" if observed["target_met"] else "**no**")  # fmt: skip


def observability(results: Results) -> str:
    if not results.fanout:
        return "*(no in-memory fan-out results)*"
    parts = []
    for stem, data in results.fanout:
        settings = data["settings"]
        rows = []
        for connections, mode, group in _by_scenario(data["rows"]):
            ours = group.get("budget_ws")
            cells = [_spread(r["cpu_us_per_delivery"], r["complete"]) if r else "-"
                     for r in (ours, *(group.get(name) for name in INSTRUMENTED))]  # fmt: skip
            rows.append([
                f"{connections:,}", FANOUT_MODES.get(mode, mode),
                f"{ours['frames_per_message']:.1f}" if ours else "-", *cells,
                *(_over(group.get(name), "cpu_ratio_to_budget_ws") for name in INSTRUMENTED),
                *_target(group.get("observed"), "cpu_ratio_target"),
            ])  # fmt: skip
        header = ["connections", "scenario", "events per message (budget_ws)", "budget_ws µs",
                  *(f"{name} µs" for name in INSTRUMENTED.values()),
                  *(f"{name} over budget_ws" for name in INSTRUMENTED.values()),
                  "target for observed", "met"]  # fmt: skip
        lead = (f"`{stem}.json`: {settings['events']} events of {settings['payload_bytes']:,} B "
                f"on one topic, CPU µs per delivery, median (min-max) of "
                f"{_runs(settings['repeat'] * settings.get('rounds', 1))}:")  # fmt: skip
        parts.append(lead + "\n\n" + _table(header, rows, right=2))
    return "\n\n".join(parts)


def instructions(results: Results) -> str:
    if not results.instructions:
        return "*(no instruction counts)*"
    parts = []
    for stem, data in results.instructions:
        settings = data["settings"]
        low, high = settings["rounds"]
        events = settings["events"]
        rows = []
        for connections, mode, group in _by_scenario(data["rows"]):
            cells = []
            for name in ("budget_ws", *INSTRUMENTED):
                row = group.get(name)
                cell = "-" if row is None else f"{row['instructions_per_delivery']:,.0f}"
                cells.append(cell if row is None or row["complete"] else cell + " (incomplete)")
            rows.append([f"{connections:,}", FANOUT_MODES.get(mode, mode), *cells,
                         *(_over(group.get(name), "ratio_to_budget_ws") for name in INSTRUMENTED),
                         *_target(group.get("observed"), "ratio_target")])  # fmt: skip
        header = ["connections", "scenario", "budget_ws",
                  *(name for name in INSTRUMENTED.values()),
                  *(f"{name} over budget_ws" for name in INSTRUMENTED.values()),
                  "target for observed", "met"]  # fmt: skip
        lead = (f"`{stem}.json`: {settings['payload_bytes']:,} B events on one topic, "
                f"instructions per delivery counted by callgrind: (the whole process's "
                f"instructions with {high} fan-outs of {events} events - with {low}) ÷ "
                f"(connections {TIMES} {events} {TIMES} {high - low}):")  # fmt: skip
        parts.append(lead + "\n\n" + _table(header, rows, right=2))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------
# PostgreSQL: budget_ws's backend beside the Redis backend and broadcaster's Postgres


POSTGRES_CONTENDERS = {"postgresql": "budget_ws PostgreSQL", "redis": "budget_ws Redis",
                       "broadcaster-postgres": "broadcaster Postgres"}  # fmt: skip


STATEMENTS = {
    "select_1": "`SELECT 1`: a bare round trip",
    "pg_notify": "`SELECT pg_notify(…)`: broadcaster's publish",
    "publish_function": "budget_ws's publish function",
    "publish_function_async_commit": "the same, not waiting for the WAL flush "
    "(`synchronous_commit = off`; not how budget_ws runs)",
}
"""``postgres.py``'s statements, by what they are."""


def _pick(runs: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((run for run in runs if all(run.get(k) == v for k, v in match.items())), None)


def _per_second(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    return "failed" if run.get("error") else f"{run['per_second']:,.0f}"


def _trips(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _postgres_file(results: Results) -> ResultsFile | None:
    return results.postgres[-1] if results.postgres else None


def postgres_publish(results: Results) -> str:
    found = _postgres_file(results)
    if found is None:
        return "*(no PostgreSQL results)*"
    stem, data = found
    p = data["environment"]["parameters"]
    runs = [run for run in data["throughput"] if run["mode"] == "publish"]
    names = [name for name in POSTGRES_CONTENDERS if any(r["contender"] == name for r in runs)]
    rows = []
    for topics, concurrency in dict.fromkeys((r["topics"], r["concurrency"]) for r in runs):
        by = {name: _pick(runs, contender=name, topics=topics, concurrency=concurrency)
              for name in names}  # fmt: skip
        ours = by.get("postgresql")
        ratios = [_ratio(ours, by.get(peer), lambda run: run.get("per_second"))
                  for peer in ("redis", "broadcaster-postgres")]  # fmt: skip
        rows.append([f"{topics:,}", f"{concurrency}", *(_per_second(by[n]) for n in names),
                     *ratios, " / ".join(_p({"latency_ms": r["call_ms"]} if r else None, "p50")
                                         for r in by.values())])  # fmt: skip
    each = " / ".join(POSTGRES_CONTENDERS[n] for n in names)
    header = ["topics", "publishing tasks", *(f"{POSTGRES_CONTENDERS[n]} /s" for n in names),
              "PostgreSQL ÷ Redis", "PostgreSQL ÷ broadcaster",
              f"one publish p50 ms ({each})"]  # fmt: skip
    trips = [f"{POSTGRES_CONTENDERS[run['contender']]} {_trips(run['per_call'])}"
             for run in data["round_trips"] if run["mode"] == "publish"]  # fmt: skip
    text = (f"`{stem}.json`: publishes per second, each task awaiting its publish before the "
            f"next, {p['publish_duration']:g} s per figure, events of about "
            f"{p['payload_bytes']:,} B.\n\n")  # fmt: skip
    text += _table(header, rows, right=2)
    if trips:
        text += (f"\n\nRound trips per publish, one at a time ({p['count_calls']} counted on "
                 f"the wire): {', '.join(trips)}.")  # fmt: skip
    return text


def postgres_transactions(results: Results) -> str:
    found = _postgres_file(results)
    if found is None:
        return "*(no PostgreSQL results)*"
    stem, data = found
    rtt = data["rtt_ms"].get("postgresql", {}).get("p50")
    rows = []
    for row in data["transactions"]:
        added = row["added_p50_ms"]
        rows.append([row["driver"], f"{row['topics']:,}", f"{row['concurrency']}",
                     *(f"{value:,.0f}" for value in row["per_second"]),
                     " → ".join(_ms(value) for value in row["p50_ms"]),
                     "-" if added is None else f"{added:+.2f} ms",
                     _number(row["added_in_rtts"], 1)])  # fmt: skip
    header = ["app's transaction", "topics", "tasks", "transactions/s without publish",
              "with publish", "p50 ms without → with", "added per transaction (p50)",
              "added ÷ a bare round trip"]  # fmt: skip
    text = (f"`{stem}.json`: `BEGIN`, an `INSERT` of one row, `COMMIT`; and the same with "
            f"`publish(..., within=...)` before the `COMMIT`. A bare round trip (`SELECT 1`, "
            f"p50) took {_ms(rtt)} ms.\n\n")  # fmt: skip
    text += _table(header, rows, right=1)
    trips = []
    for row in data["transaction_round_trips"]:
        added = row["added"]
        trips.append([row["driver"], _trips(row["without"]), _trips(row["with"]), _trips(added),
                      "-" if added is None else "yes" if added <= 1 else "**no**"])  # fmt: skip
    text += "\n\n" + _table(["app's transaction", "round trips without publish", "with publish",
                              "added", "at most one added"], trips, right=1)  # fmt: skip
    return text


def postgres_delivery(results: Results) -> str:
    found = _postgres_file(results)
    if found is None:
        return "*(no PostgreSQL results)*"
    stem, data = found
    runs = data["delivery"]
    if not runs:
        return "*(no cross-worker PostgreSQL results)*"
    ours = _pick(runs, contender="postgresql")
    rows = []
    for run in runs:
        delivered = f"{run['received']:,}/{run['expected']:,}"
        if run.get("error"):
            delivered += " (failed)"
        elif run["duplicates"]:
            delivered += f", {run['duplicates']} twice"
        against = "-"
        if ours is not None and run is not ours:
            against = " / ".join(_ratio(ours, run, read) for read in (
                lambda r: r["latency_ms"].get("p50"), lambda r: r["latency_ms"].get("p99"),
                lambda r: r.get("receiver_cpu_us_per_event")))  # fmt: skip
        rows.append([POSTGRES_CONTENDERS.get(run["contender"], run["contender"]), delivered,
                     _p(run, "p50"), _p(run, "p99"), _p(run, "max"),
                     _number(run.get("receiver_cpu_us_per_event"), 1), against])  # fmt: skip
    header = ["contender", "delivered", "p50 ms", "p99 ms", "max ms", "receiving worker CPU "
              "µs per event", "PostgreSQL ÷ this: p50 / p99 / CPU"]  # fmt: skip
    run = runs[0]
    text = (f"`{stem}.json`: a steady {run['rate']:g} events/s for {run['duration']:g} s to one "
            f"topic, published by one process, received by another with a backend of its "
            f"own.\n\n")  # fmt: skip
    text += _table(header, rows)
    statements = data.get("statements_ms", {})
    if statements:
        text += ("\n\nThe PostgreSQL statement behind each publish, alone, one at a time at the "
                 "same steady rate on one connection:\n\n")  # fmt: skip
        timed = [[STATEMENTS.get(name, name), *(_ms(figures.get(key)) for key in ("p50", "p99"))]
                 for name, figures in statements.items()]  # fmt: skip
        text += _table(["statement", "p50 ms", "p99 ms"], timed)
    probe = data.get("broadcaster_concurrent_publish")
    if probe:
        text += (f"\n\nbroadcaster's Postgres backend, {probe['attempted']} publishes started at "
                 f"once with no lock around them: {probe['failed']} failed"
                 + (f" (`{probe['error']}`)." if probe["error"] else "."))  # fmt: skip
    return text


# --------------------------------------------------------------------------------------
# Presence, user streams and revocation on Redis


COST_MODES = {"storm": "all at once", "steady": "one at a time"}
"""``presence.py``'s Redis cost windows, by how the connections came (or went)."""
COST_FIGURES = {"round_trips": ("round trips", 2), "commands": ("commands", 1),
                "bytes_to_redis": ("bytes to Redis", 0),
                "bytes_from_redis": ("bytes from Redis", 0),
                "worker_cpu_us": ("workers' CPU µs", 0)}  # fmt: skip
"""Per-connection figures of a cost window, by key: their column and decimals."""


def _off_on(off: dict[str, Any] | None, on: dict[str, Any] | None, key: str, digits: int) -> str:
    a = off["per_connection"].get(key) if off else None
    b = on["per_connection"].get(key) if on else None
    if a is None or b is None:
        return "-"
    return f"{a:,.{digits}f} → {b:,.{digits}f} ({b - a:+,.{digits}f})"


def _presence_cost(stem: str, data: dict[str, Any]) -> str:
    costs = [cost for cost in data["redis_costs"] if not cost["error"]]
    if not costs:
        return "*(no Redis cost results)*"
    p = data["environment"]["parameters"]
    rows = []
    for mode, phase in dict.fromkeys((cost["mode"], cost["phase"]) for cost in costs):
        off, on = (_pick(costs, mode=mode, phase=phase, presence=flag) for flag in (False, True))
        any_cost = on or off
        assert any_cost is not None
        what = f"{phase}, {COST_MODES.get(mode, mode)} ({any_cost['connections']:,})"
        rows.append([what, *(_off_on(off, on, key, digits)
                             for key, (_, digits) in COST_FIGURES.items())])  # fmt: skip
    header = ["per connection", *(f"{name}: off → on (presence's part)"
                                  for name, _ in COST_FIGURES.values())]  # fmt: skip
    lead = (f"`{stem}.json`: two workers on Redis; identified users connect and subscribe "
            f"one topic, then leave, {COST_MODES['storm']} and {COST_MODES['steady']} "
            f"{p['steady_spacing']:g} s apart (presence interval {p['interval']:g} s); "
            f"presence off, then on (each connection asking for the topic's presence). "
            f"Round trips and bytes counted on the wire between the workers and Redis, "
            f"commands by Redis (`INFO commandstats`, those run by scripts included):")  # fmt: skip
    return lead + "\n\n" + _table(header, rows)


def _presence_queries(stem: str, data: dict[str, Any]) -> str:
    queries = data["queries"]
    if not queries:
        return "*(no presence() results)*"
    how = {"connections": "connected to two workers",
           "rows": "rows written as two workers would (`presence_write`)"}  # fmt: skip

    def outbox(query: dict[str, Any]) -> str:
        raised = query.get("outbox_max_bytes")
        return f", `OutboxLimits.max_bytes` raised to {_bytes(raised)}" if raised else ""

    rows = [[f"{q['users']:,}", how.get(q["source"], q["source"]) + outbox(q), f"{q['rows']:,}",
             f"{q['max_members']:,}", "failed" if q["error"] else f"{q['listed']:,}",
             _p(q, "p50"), _p(q, "p99")]
            for q in queries]  # fmt: skip
    header = ["users present", "how", "rows stored for the topic", "`max_members`",
              "members listed", "p50 ms", "p99 ms"]  # fmt: skip
    lead = (f"`{stem}.json`: `await manager.presence(topic)`, "
            f"{queries[0]['queries']} calls one after the other:")  # fmt: skip
    text = lead + "\n\n" + _table(header, rows, right=2)
    snapshot = data.get("snapshot_frame")
    if snapshot and "bytes" in snapshot:
        text += (f"\n\nThe `presence` frame a client is sent when it subscribes among "
                 f"{snapshot['count']:,} users: {snapshot['bytes']:,} B, "
                 f"{snapshot['listed']:,} members listed"
                 f"{' (truncated)' if snapshot['truncated'] else ''}.")  # fmt: skip
    return text


def _presence_storm(stem: str, data: dict[str, Any]) -> str:
    storm = data["storm"]
    if storm.get("error"):
        return f"*(the presence storm failed: {storm['error']})*"
    if not storm["frames"]:
        return "*(no presence storm results)*"
    p = data["environment"]["parameters"]
    connect = storm["connect"]
    rows = []
    for f in storm["frames"]:
        frames, sent = f["presence_frames"], f["presence_bytes"]
        per_frame = f["changes"] / frames["mean"] if frames["mean"] else None
        rows.append([f["phase"], f"{f['group']} ({f['subscribers']:,})", f"{f['changes']:,}",
                     f"{f['seconds']:.1f} s", f"{f['ticks']}",
                     f"{frames['mean']:.1f} / {frames['max']:g}",
                     f"{_bytes(round(sent['mean']))} / {_bytes(round(sent['max']))}",
                     _number(per_frame, 0), "yes" if f["bounded"] else "**no**"])  # fmt: skip
    header = ["storm", "subscribers", "users who joined or left", "storm's start to the last "
              "presence frame", "intervals in it", "presence frames per subscriber: mean / max",
              "bytes per subscriber: mean / max", "changes per frame (mean)",
              "within one frame per interval"]  # fmt: skip
    members = p["members"] // 2 * 2
    lead = (f"`{stem}.json`: {members:,} connections join one topic over two workers "
            f"(in-memory connections, {p['concurrency']} connecting at once per worker; it "
            f"took {connect.get('join_seconds', 0):.1f} s), each asking for presence, then "
            f"all leave ({connect.get('leave_seconds', 0):.1f} s); {p['observers'] * 2} "
            f"observers were there before and after. Presence interval "
            f"{p['interval']:g} s; a member's frames include its snapshot:")  # fmt: skip
    return lead + "\n\n" + _table(header, rows, right=2)


def _presence_revocation(stem: str, data: dict[str, Any]) -> str:
    runs = [run for run in data["revocation"] if not run["error"]]
    if not runs:
        failed = next(iter(data["revocation"]), None)
        if failed is None:
            return "*(no revocation results)*"
        return f"*(revocation failed: {failed['error']})*"
    until = {"disconnect_user": "the last tab's socket closed",
             "unsubscribe_user": "the last tab's `unsubscribed` frame"}  # fmt: skip
    rows = []
    for run in sorted(runs, key=lambda run: run["operation"]):
        p99 = run["latency_ms"].get("p99")
        met = p99 is not None and p99 <= run["target_ms"] and run["complete"] == run["repetitions"]
        rows.append([f"`{run['operation']}`", until.get(run["operation"], "-"),
                     f"{run['complete']}/{run['repetitions']}", _p(run, "p50"), _p(run, "p99"),
                     _p(run, "max"), _number(run["p99_to_target"], 3),
                     "yes" if met else "**no**"])  # fmt: skip
    run = runs[0]
    header = ["call", "until", "every tab reached", "p50 ms", "p99 ms", "max ms",
              f"p99 ÷ {run['target_ms'] / 1000:g} s target", "met"]  # fmt: skip
    lead = (f"`{stem}.json`: two uvicorn workers on Redis, {run['background']:,} other "
            f"connections and {run['repetitions']} users of {run['tabs']} tabs spread over "
            f"both (real sockets, one client process); a third process calls the manager for "
            f"one user at a time, and the time runs from just before the call:")  # fmt: skip
    return lead + "\n\n" + _table(header, rows, right=2)


def presence(results: Results) -> str:
    if not results.presence:
        return "*(no presence results)*"
    stem, data = results.presence[-1]
    parts = (_presence_cost, _presence_queries, _presence_storm, _presence_revocation)
    return "\n\n".join(part(stem, data) for part in parts)


# --------------------------------------------------------------------------------------
# What was checked, and where the figures came from


def verdicts(results: Results) -> str:
    rows = []
    for stem, data in results.all():
        for verdict in data.get("verdicts", []):
            rows.append([f"`{stem}`", verdict["label"], verdict["check"].replace("|", "/"),
                         "yes" if verdict["met"] else "**no**"])  # fmt: skip
    return _table(["file", "run", "target", "met"], rows, right=3) if rows else "*(none)*"


def _parameters(data: dict[str, Any]) -> str:
    p = data["environment"]["parameters"]
    if data["environment"]["benchmark"] == "instructions":
        counts = ", ".join(f"{n:,}" for n in p["connections"])
        modes = " and ".join(FANOUT_MODES.get(mode, mode) for mode in p["modes"])
        low, high = p["rounds"]
        return (f"in-memory fan-out under callgrind: {counts} connections {TIMES} "
                f"{p['events']} events {TIMES} {p['payload_bytes']:,} B, {low} and {high} "
                f"fan-outs, {modes}; {', '.join(p['contenders'])}; one run per count")  # fmt: skip
    if data["environment"]["benchmark"] == "fanout":
        counts = ", ".join(f"{n:,}" for n in p["connections"])
        modes = " and ".join(FANOUT_MODES.get(mode, mode) for mode in p["modes"])
        return (f"in-memory fan-out in one process: {counts} connections {TIMES} "
                f"{p['events']} events {TIMES} {p['payload_bytes']:,} B, {modes}; "
                f"{', '.join(p['contenders'])}; {_runs(p['repeat'] * p.get('rounds', 1))} "
                f"per figure (median); "
                f"{p['anyio_backend']}")  # fmt: skip
    if data["environment"]["benchmark"] == "postgres":
        env = data["environment"]
        servers = env.get("servers", {})
        settings = servers.get("postgresql_settings", {})
        where = "private" if env.get("postgres_url", "").startswith("private") else "shared"
        flush = ", ".join(f"{name} {settings[name]}" for name in ("fsync", "synchronous_commit")
                          if name in settings)  # fmt: skip
        return (f"PostgreSQL {servers.get('postgresql', '?')} ({where} server"
                f"{', ' + flush if flush else ''}), Redis {servers.get('redis', '?')}; "
                f"publishes/s: {', '.join(map(str, p['topics']))} topics {TIMES} "
                f"{', '.join(map(str, p['concurrency']))} tasks, {p['publish_duration']:g} s "
                f"each; round trips over {p['count_calls']} calls; across workers: steady "
                f"{p['rate']:g}/s for {p['duration']:g} s")  # fmt: skip
    if data["environment"]["benchmark"] == "presence":
        env = data["environment"]
        where = "private" if env.get("redis_url", "").startswith("private") else "shared"
        return (f"Redis {env.get('redis', '?')} ({where} server): {', '.join(p['parts'])}; "
                f"cost of {p['storm_connections']:,} connections at once and "
                f"{p['steady_connections']} one at a time; a storm of {p['members']:,}; "
                f"presence() {TIMES} {p['queries']}; revocation of "
                f"{p['revocation_repetitions']} users {TIMES} {p['tabs']} tabs beside "
                f"{p['background']:,}")  # fmt: skip
    if data["environment"]["benchmark"] == "cross_worker":
        return (f"scenarios {', '.join(p['scenario'])}; {p['duration']:g} s per steady run; "
                f"{p['client_processes']} client processes")  # fmt: skip
    if data["environment"]["benchmark"] == "hostile":
        where = f"; server on `{p['src']}`" if p.get("src") else ""
        return (f"hostile clients: {p['healthy']} healthy at {p['rate']:g} events/s, "
                f"{p['duration']:g} s quiet, then beside {p['hostile']} hostile at "
                f"{p['hostile_rate']:g} frames/s {TIMES} {p['frame_bytes']:,} B; uvicorn "
                f"`--ws {p['ws']}`{where}")  # fmt: skip
    parts = [f"scenarios {', '.join(p['scenarios'])}"]
    if "fanout" in p["scenarios"]:
        sizes = ", ".join(f"{size:,} B" for size in p["payload_bytes"])
        counts = ", ".join(f"{n:,}" for n in p["connections"])
        parts.append(f"fan-out {counts} connections {TIMES} {p['events']} events {TIMES} "
                     f"{sizes}, burst and steady {p['steady_rate']:g}/s")  # fmt: skip
    if "idle" in p["scenarios"]:
        parts.append(f"idle {p['idle_connections']:,}")
    parts.append(f"uvicorn `--ws {p['ws']}`, deflate {'on' if p['deflate'] else 'off'}")
    if p.get("loop_contenders"):
        parts.append(f"{', '.join(p['loop_contenders'])} on {p['loop']}")
    return "; ".join(parts)


def provenance(results: Results) -> str:
    rows = []
    machines = set()
    versions: dict[str, list[str]] = {}
    for stem, data in results.all():
        env = data["environment"]
        machine = env["machine"]
        machines.add(f"{machine['cpus']} CPUs ({machine['cpu_model']}), "
                     f"{machine['memory_gib']} GiB, {machine['system']}, "
                     f"Python {env['python']}")  # fmt: skip
        for name, value in env["versions"].items():
            if value not in versions.setdefault(name, []):
                versions[name].append(value)
        load = f"{env['load_before'][0]:.2f} → {env.get('load_after', ['?'])[0]}"
        rows.append([f"`{stem}.json`", env["date"].replace("T", " ")[:16], _commit(env["library"]),
                     _commit(env["harness"]), load, _parameters(data)])  # fmt: skip
    text = _table(["results file", "date (UTC)", "library `src/`", "harness `benchmarks/`",
                   "load (1 min) before → after", "what ran"], rows, right=6)  # fmt: skip
    states = {_commit(data["environment"]["library"]) for _, data in results.all()}
    if len(states) == 1:
        text += f"\n\nEvery file measured the same library state: {states.pop()}."
    else:
        text += (f"\n\nThe files measured {len(states)} different library states (see the "
                 "table): compare figures within one file, never across files.")  # fmt: skip
    text += "\n\nMachine: " + "; ".join(sorted(machines)) + "."
    text += "\n\nVersions: " + ", ".join(f"{name} {' / '.join(values)}"
                                          for name, values in versions.items()) + "."  # fmt: skip
    return text


RENDERERS: dict[str, Callable[[Results], str]] = {
    "provenance": provenance,
    "summary": summary,
    "fanout": fanout,
    "fanout-detail": fanout_detail,
    "stalled-setup": stalled_setup,
    "stalled": stalled,
    "idle": idle,
    "settings": settings,
    "redis": redis,
    "redis-cpu": redis_cpu,
    "hostile": hostile,
    "observability": observability,
    "instructions": instructions,
    "postgres-publish": postgres_publish,
    "postgres-transactions": postgres_transactions,
    "postgres-delivery": postgres_delivery,
    "presence": presence,
    "verdicts": verdicts,
}
"""Every generated block of the page, by the name its markers carry."""
