"""Every run behind ``docs/performance.md``, with the page's parameters, into results files.

Run it with ``python -m benchmarks.suite`` (about 35 minutes on 2 cores), then
``python -m benchmarks.report`` to rewrite the page's tables from the files. Each run is
an ordinary benchmark command, printed before it starts, so any one can be rerun alone.
Other work on the machine skews the figures: before each run this waits (bounded) for
the 1-minute load average to fall below ``--max-load``; the files record the load anyway.
The hostile-client runs also measure the code before their fixes when ``--before`` names
a checkout of it (``git worktree add /tmp/budget-before 8e634c6``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RESULTS", "main", "runs"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {
    "settings-sansio": ["--ws", "websockets-sansio"],
    "settings-wsproto": ["--ws", "wsproto"],
    "settings-legacy": ["--ws", "websockets"],
    "settings-deflate": ["--ws", "websockets-sansio", "--deflate"],
}
"""The uvicorn settings compared for idle memory, by results file name."""


PEERS_REPEAT = 3
"""Runs per figure of ``peers`` and ``peers-uvloop`` (the median run's): a burst lasts a
fraction of a second and a connect storm a few, so one run moves by 10 % or more on
2 cores, enough to decide a verdict between contenders that are close."""
UVLOOP_CONTENDERS = ("budget_ws", "native", "websockets", "picows")
"""The contenders of ``peers-uvloop``: the servers without uvicorn run on uvloop there."""
HOSTILE = {"hostile": [], "hostile-wsproto": ["--ws", "wsproto"]}
"""The hostile-client runs, by results file name; each once more with ``--before``."""
BEFORE_FIXES = "8e634c6"
"""The last commit before the fixes the hostile runs check (issue 10, items 7 and 8)."""
OBSERVED_REPEAT = 6
"""Sets of connections per figure of ``fanout-observed``, each timing two fan-outs per
scenario (about 20 minutes on 2 cores): an even count, so that each contender goes first
as often as last (``fanout.py`` alternates the order)."""


def runs(results: Path, large: int, settings_connections: int,
         before: Path | None = None) -> list[tuple[str, list[str]]]:  # fmt: skip
    """(results file stem, command) for every run, in order.

    ``before``: a checkout of ``BEFORE_FIXES``, whose ``src/`` the ``hostile-before*``
    runs serve (without it they are left out).
    """
    peers = [sys.executable, "-m", "benchmarks.peers"]
    repeated = [*peers, "--repeat", str(PEERS_REPEAT)]
    planned = [
        ("peers", [*repeated, "--connections", "1000", "--payload-bytes", "200", "2048",
                   "--idle-connections", str(large)]),
    ]  # fmt: skip
    if large > 1000:
        planned.append((f"peers-{large}", [*peers, "--scenarios", "fanout", "--connections",
                                           str(large), "--payload-bytes", "200"]))  # fmt: skip
    # The native server on uvloop against itself on asyncio (peers.json), with its peers
    # of the targets: websockets and picows on uvloop too, budget_ws on uvicorn as ever.
    planned.append(("peers-uvloop", [*repeated, "--contenders", *UVLOOP_CONTENDERS, "--loop",
                                     "uvloop", "--scenarios", "fanout", "idle",
                                     "--connections", "1000", "--payload-bytes", "200", "2048",
                                     "--idle-connections", str(large)]))  # fmt: skip
    for name, options in SETTINGS.items():
        planned.append((name, [*peers, "--scenarios", "idle", "--contenders", "budget_ws",
                               "floor", "websockets", "--idle-connections",
                               str(settings_connections), *options]))  # fmt: skip
    planned.append(("cross_worker", [sys.executable, "-m", "benchmarks.cross_worker",
                                     "--private-redis"]))  # fmt: skip
    planned.append(("postgres", [sys.executable, "-m", "benchmarks.postgres"]))
    planned.append(("presence", [sys.executable, "-m", "benchmarks.presence"]))
    planned.append(("fanout-observed", [sys.executable, "-m", "benchmarks.fanout",
                                        "--contenders", "budget_ws", "observed", "metrics",
                                        "tracing", "--connections", "1000", "10000",
                                        "--events", "100", "--repeat", str(OBSERVED_REPEAT),
                                        "--rounds", "2", "--memory"]))  # fmt: skip
    planned.append(("instructions", [sys.executable, "-m", "benchmarks.instructions"]))
    hostile = [sys.executable, "-m", "benchmarks.hostile"]
    for name, options in HOSTILE.items():
        planned.append((name, [*hostile, *options]))
        if before is not None:
            stem = name.replace("hostile", "hostile-before", 1)
            planned.append((stem, [*hostile, *options, "--src", str(before / "src")]))
    return [(stem, [*command, "--json-file", str(results / f"{stem}.json")])
            for stem, command in planned]  # fmt: skip


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.2f} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(15)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the files")
    parser.add_argument("--large", type=int, default=10_000,
                        help="connections of the 200 B fan-out and idle runs (10,000)")  # fmt: skip
    parser.add_argument("--settings-connections", type=int, default=5000)
    parser.add_argument("--only", nargs="+", metavar="STEM", help="run just these files")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=60, help="seconds to wait per run")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="a checkout of the commit before the hostile-client fixes "
                        f"(git worktree add /tmp/budget-before {BEFORE_FIXES}): also run "
                        "hostile-before*.json on its src/")  # fmt: skip
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.before is None:
        print("no --before CHECKOUT: the hostile-before* runs are left out", file=sys.stderr)
    status = 0
    for stem, command in runs(args.results, args.large, args.settings_connections,
                              args.before):  # fmt: skip
        if args.only and stem not in args.only:
            continue
        wait_for_quiet(args.max_load, args.max_wait)
        print("$ " + shlex.join(["python", *command[1:]]), file=sys.stderr, flush=True)
        status |= subprocess.call(command, cwd=ROOT)
    return status


if __name__ == "__main__":
    sys.exit(main())
