"""Rewrite the generated blocks of ``docs/performance.md`` from the results files.

Run it with ``python -m benchmarks.report`` after ``python -m benchmarks.suite``;
``--check`` changes nothing and fails if the page differs from what the results produce
(so a hand-edited figure, or results committed without regenerating, is caught). The page
marks each block with ``<!-- begin: NAME -->`` and ``<!-- end: NAME -->``; the prose
between blocks is left alone and states no measured figure of its own.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.tables import RENDERERS, Results

__all__ = ["load", "main", "render_page"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"
BLOCK = re.compile(r"(<!-- begin: ([\w-]+) -->\n)(.*?)(<!-- end: \2 -->)", re.DOTALL)


class ReportError(Exception):
    """The page and the results do not fit together (a marker or a file is missing)."""


def load(directory: Path) -> Results:
    """Every ``*.json`` of ``directory``, sorted by name, filed by the benchmark it ran."""
    results = Results()
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        benchmark = data.get("environment", {}).get("benchmark")
        if benchmark == "cross_worker":
            results.cross_worker.append((path.stem, data))
        elif benchmark == "peers" and path.stem.startswith("settings-"):
            results.settings.append((path.stem, data))
        elif benchmark == "peers":
            results.peers.append((path.stem, data))
        elif benchmark == "hostile":
            results.hostile.append((path.stem, data))
        elif benchmark == "fanout":
            results.fanout.append((path.stem, data))
        elif benchmark == "instructions":
            results.instructions.append((path.stem, data))
        elif benchmark == "postgres":
            results.postgres.append((path.stem, data))
        elif benchmark == "presence":
            results.presence.append((path.stem, data))
        else:
            raise ReportError(f"{path}: not a results file of benchmarks.peers, cross_worker, "
                              "hostile, fanout, instructions, postgres or presence")  # fmt: skip
    if not results.all():
        raise ReportError(f"no results files in {directory}: run python -m benchmarks.suite")
    return results


def render_page(page: str, results: Results) -> str:
    """``page`` with every generated block rewritten; raises if a block has no marker."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in RENDERERS:
            raise ReportError(f"the page has a block {name!r} that nothing renders")
        seen.add(name)
        return f"{match.group(1)}\n{RENDERERS[name](results).rstrip()}\n\n{match.group(4)}"

    text = BLOCK.sub(replace, page)
    missing = set(RENDERERS) - seen
    if missing:
        raise ReportError(f"the page lacks the markers of {sorted(missing)}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the files")
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; fail if the page is out of date")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        current = args.page.read_text()
        wanted = render_page(current, load(args.results))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if current == wanted:
            return 0
        diff = difflib.unified_diff(current.splitlines(keepends=True),
                                    wanted.splitlines(keepends=True),
                                    str(args.page), "from the results")  # fmt: skip
        sys.stdout.writelines(diff)
        print(f"{args.page} differs from its results: run python -m benchmarks.report",
              file=sys.stderr)  # fmt: skip
        return 1
    if current != wanted:
        args.page.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
