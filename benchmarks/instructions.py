"""Instructions per delivery of the in-memory fan-out, counted by callgrind: repeatable.

Run it with ``python -m benchmarks.instructions``; ``benchmarks/README.md`` explains it.
``benchmarks.fanout`` measures CPU time per delivery, which swings with the machine's
load; the number of instructions the same work executes does not. For each contender,
mode and N, this runs ``python -m benchmarks.fanout`` (one contender, one mode, one
repeat, no memory probe) under ``valgrind --tool=callgrind`` twice, timing LOW and HIGH
rounds of the same fan-out of M events on one set of connections, and takes the
difference of the two programs' instruction totals over N x M x (HIGH - LOW) deliveries.
What happens once per program (interpreter start, imports, connecting and subscribing the
N connections) cancels out; everything a fan-out costs counts, its writes included: in a
burst each connection writes the M events in one message, whatever M is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .fanout import CONTENDERS as FANOUT_CONTENDERS
from .fanout import (
    EXTRA_CONTENDERS,
    MODES,
    OBSERVABILITY_PACKAGES,
    OBSERVED_TARGETS,
    Contender,
    Mode,
    observed_verdict,
    scenario_name,
)
from .provenance import PACKAGES, describe, environment, load_average

__all__ = ["CallgrindRun", "main", "measure", "results_document", "summarise", "verdicts"]

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS: tuple[Contender, ...] = ("budget_ws", "observed", "metrics", "tracing")
"""The default contenders: budget_ws, and budget_ws with metrics and/or tracing."""
PAYLOAD_BYTES = 200
"""Size of each event's ``data`` (``fanout.py``'s default)."""


@dataclass
class CallgrindRun:
    """One ``benchmarks.fanout`` process under callgrind: one contender, mode, N and M."""

    contender: Contender
    mode: Mode
    connections: int
    events: int
    rounds: int
    """Fan-outs of ``events`` events timed on the one set of connections."""
    instructions: int
    """The program's instruction total (callgrind's ``summary``, ``PROGRAM TOTALS``)."""
    complete: bool
    """Whether every connection received every event."""


def _command(contender: Contender, mode: Mode, connections: int, events: int, rounds: int,
             out_file: Path, json_file: Path) -> list[str]:  # fmt: skip
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            sys.executable, "-m", "benchmarks.fanout", "--contenders", contender,
            "--connections", str(connections), "--modes", mode, "--events", str(events),
            "--rounds", str(rounds), "--payload-bytes", str(PAYLOAD_BYTES), "--repeat", "1",
            "--memory", "--json-file", str(json_file)]  # fmt: skip


def _program_totals(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{out_file}: callgrind wrote no summary line")


def measure(
    contender: Contender, mode: Mode, connections: int, events: int, rounds: int
) -> CallgrindRun:
    """Run the fan-out once under callgrind and count the instructions of the whole process.

    ``PYTHONHASHSEED=0``, so that string hashing does not vary from one run to the next.
    """
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    with tempfile.TemporaryDirectory(prefix="instructions-") as directory:
        out_file, json_file = Path(directory) / "callgrind.out", Path(directory) / "run.json"
        command = _command(contender, mode, connections, events, rounds, out_file, json_file)
        completed = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if completed.returncode not in (0, 1) or not json_file.exists():
            raise RuntimeError(
                f"{contender} {mode} N={connections} M={events} x{rounds} under callgrind failed "
                f"(exit {completed.returncode}):\n{completed.stderr[-4000:]}"
            )
        runs = json.loads(json_file.read_text())["runs"]
        return CallgrindRun(
            contender=contender,
            mode=mode,
            connections=connections,
            events=events,
            rounds=rounds,
            instructions=_program_totals(out_file),
            complete=completed.returncode == 0 and all(run["complete"] for run in runs),
        )


def summarise(runs: Sequence[CallgrindRun], low: int, high: int) -> list[dict[str, Any]]:
    """One row per contender, N and mode: instructions per delivery, ratio over budget_ws.

    Instructions per delivery = (total with ``high`` rounds - total with ``low``) /
    (N x M x (high - low)). An ``observed`` row also carries its target (``ratio_target``, from
    ``fanout.OBSERVED_TARGETS``) and whether it met it (``target_met``: within the target,
    and both it and budget_ws delivered every event in both runs).
    """
    found: dict[tuple[str, str, int, int], CallgrindRun] = {
        (run.contender, run.mode, run.connections, run.rounds): run for run in runs
    }
    keys = sorted({(run.connections, run.mode) for run in runs},
                  key=lambda key: (key[0], MODES.index(key[1])))  # fmt: skip
    order = FANOUT_CONTENDERS + EXTRA_CONTENDERS
    rows: list[dict[str, Any]] = []
    for connections, mode in keys:
        group: list[dict[str, Any]] = []
        for contender in order:
            lower = found.get((contender, mode, connections, low))
            upper = found.get((contender, mode, connections, high))
            if lower is None or upper is None:
                continue
            deliveries = connections * upper.events * (high - low)
            per_delivery = (upper.instructions - lower.instructions) / deliveries
            group.append({
                "contender": contender, "connections": connections, "mode": mode,
                "events": upper.events, "rounds": [low, high],
                "instructions": [lower.instructions, upper.instructions],
                "instructions_per_delivery": per_delivery,
                "complete": lower.complete and upper.complete,
            })  # fmt: skip
        baseline = next((row for row in group if row["contender"] == "budget_ws"), None)
        if baseline is not None:
            for row in group:
                if row["contender"] == "budget_ws":
                    continue
                ratio = row["instructions_per_delivery"] / baseline["instructions_per_delivery"]
                row["ratio_to_budget_ws"] = ratio
                if row["contender"] == "observed":
                    row["ratio_target"] = OBSERVED_TARGETS[mode]
                    row["target_met"] = (ratio <= OBSERVED_TARGETS[mode] and row["complete"]
                                         and baseline["complete"])  # fmt: skip
        rows.extend(group)
    return rows


def verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The observability targets of ``fanout.py``, held against instructions per delivery."""
    return [
        observed_verdict(
            f"in-memory fanout {row['connections']} x {row['events']} events, "
            f"{scenario_name(row['mode'])}, callgrind {row['rounds'][0]}/{row['rounds'][1]} "
            "rounds",
            "instructions/delivery",
            row["ratio_to_budget_ws"],
            row["ratio_target"],
            row["target_met"],
        )
        for row in rows
        if "target_met" in row
    ]


def results_document(env: dict[str, Any], settings: dict[str, Any],
                     runs: Sequence[CallgrindRun]) -> dict[str, Any]:  # fmt: skip
    """The JSON of a run (``--json-file``), the form ``benchmarks.report`` reads.

    Args:
        env: ``provenance.environment("instructions", ...)`` with ``load_after`` added.
        settings: ``connections``, ``events``, ``rounds`` (low, high), ``payload_bytes``,
            ``modes``
            and ``contenders`` of the run.
        runs: Every callgrind run.
    """
    low, high = settings["rounds"]
    rows = summarise(runs, low, high)
    return {
        "environment": env,
        "settings": settings,
        "rows": rows,
        "runs": [asdict(run) for run in runs],
        "verdicts": verdicts(rows),
        "loadavg_end": env["load_after"],
    }


def _print_report(report: dict[str, Any]) -> None:
    print(describe(report["environment"]))
    low, high = report["settings"]["rounds"]
    events = report["settings"]["events"]
    print(f"instructions per delivery (callgrind): (total with {high} fan-outs of {events} "
          f"events - total with {low}) / (N x {events} x {high - low})")  # fmt: skip
    header = ["contender", "N", "mode", "instructions/delivery", "over budget_ws", "target", "met"]
    lines = []
    for row in report["rows"]:
        ratio = row.get("ratio_to_budget_ws")
        lines.append([
            row["contender"], f"{row['connections']:,}", row["mode"],
            f"{row['instructions_per_delivery']:,.0f}"
            + ("" if row["complete"] else " INCOMPLETE"),
            "" if ratio is None else f"{100 * (ratio - 1):+.1f} %",
            f"<= +{100 * (row['ratio_target'] - 1):.0f} %" if "ratio_target" in row else "",
            ("yes" if row["target_met"] else "NO") if "target_met" in row else "",
        ])  # fmt: skip
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in [header, ["-" * width for width in widths], *lines]:
        cells = zip(line, widths, strict=True)
        print("  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                        for i, (cell, width) in enumerate(cells)).rstrip())  # fmt: skip
    for verdict in report["verdicts"]:
        print(f"target: {verdict['label']}: {verdict['check']}: "
              f"{'met' if verdict['met'] else 'NOT met'}")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1_000], metavar="N",
                        help="numbers of connections (default: 1000)")  # fmt: skip
    parser.add_argument("--contenders", nargs="+", choices=FANOUT_CONTENDERS + EXTRA_CONTENDERS,
                        default=list(CONTENDERS),
                        help="default: budget_ws observed metrics tracing")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--events",
        type=int,
        default=100,
        metavar="M",
        help="events per fan-out (default: 100, as benchmarks.fanout)",
    )
    parser.add_argument("--rounds", type=int, nargs=2, default=[1, 2],
                        metavar=("LOW", "HIGH"),
                        help="fan-outs of the two runs whose difference is counted "
                        "(default: 1 2)")  # fmt: skip
    parser.add_argument("--json-file", type=Path, metavar="PATH",
                        help="also write the JSON results to PATH")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement; 0 when every run delivered everything, 2 without valgrind."""
    args = _parser().parse_args(argv)
    low, high = args.rounds
    if not 0 < low < high or args.events < 1 or min(args.connections) < 1:
        raise SystemExit("--rounds needs 0 < LOW < HIGH; --events and --connections positive")
    if shutil.which("valgrind") is None:
        print("error: valgrind is not installed (Debian: apt-get install valgrind); this "
              "benchmark counts instructions with valgrind --tool=callgrind",
              file=sys.stderr)  # fmt: skip
        return 2
    parameters = {key: value for key, value in vars(args).items() if key != "json_file"}
    parameters |= {"payload_bytes": PAYLOAD_BYTES, "observed_targets": OBSERVED_TARGETS}
    env = environment("instructions", parameters, (*PACKAGES, *OBSERVABILITY_PACKAGES))
    plan = [(contender, mode, connections, args.events, rounds)
            for connections in args.connections
            for mode in args.modes for contender in args.contenders
            for rounds in (low, high)]  # fmt: skip

    def run(item: tuple[Contender, Mode, int, int, int]) -> CallgrindRun:
        result = measure(*item)
        short = "" if result.complete else " INCOMPLETE"
        print(f"{result.contender:<9} N={result.connections:<6} {result.mode:<5} "
              f"M={result.events} x{result.rounds}: {result.instructions:,} instructions{short}",
              file=sys.stderr, flush=True)  # fmt: skip
        return result

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = list(pool.map(run, plan))
    env["load_after"] = load_average()
    settings = {"connections": args.connections, "events": args.events, "rounds": [low, high],
                "payload_bytes": PAYLOAD_BYTES, "modes": args.modes,
                "contenders": args.contenders}  # fmt: skip
    report = results_document(env, settings, runs)
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    return 0 if all(run.complete for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
