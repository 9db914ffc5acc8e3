"""What a results file records about where its figures came from.

A figure without the code and machine that produced it cannot be checked or compared, so
every results file starts with this: the commits of the harness (``benchmarks/``) and of
the library (``src/``), whether either had uncommitted changes (and a digest of their
files, which names the exact code even then), the date, the machine and its load, the
package versions and the scenario parameters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = [
    "PACKAGES",
    "checkout",
    "describe",
    "environment",
    "git_commit",
    "load_average",
    "package_version",
]

ROOT = Path(__file__).resolve().parent.parent
NOT_MEASURING = frozenset({"report.py", "tables.py"})
"""The page generator: it reads results and measures nothing, so the harness digest
leaves it out (a results file stays valid when only the page's layout changes)."""
PACKAGES = ("budget-ws", "uvicorn", "websockets", "starlette", "anyio", "pydantic",
            "broadcaster", "redis", "uvloop")  # fmt: skip


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()


def git_commit(path: str) -> dict[str, Any]:
    """The last commit that changed ``path``, whether it has uncommitted changes, a digest.

    The digest (SHA-256 over the path's ``.py`` files, names and contents, but the page
    generator's) identifies the code that ran even when it was not committed yet.
    """
    digest = hashlib.sha256()
    for file in sorted((ROOT / path).rglob("*.py")):
        if "__pycache__" in file.parts or file.name in NOT_MEASURING:
            continue
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return {
        "commit": _git("log", "-1", "--format=%h", "--", path) or "-",
        "dirty": bool(_git("status", "--porcelain", "--", path)),
        "digest": digest.hexdigest()[:16],
    }


def checkout(src: Path) -> dict[str, Any]:
    """What :func:`git_commit` says of ``src/``, for another checkout's ``src`` (a worktree
    whose library a run imported through ``PYTHONPATH``); ``checkout`` is its ``HEAD``."""

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(src), *arguments], capture_output=True,
                              text=True, check=False).stdout.strip()  # fmt: skip

    digest = hashlib.sha256()
    top = Path(git("rev-parse", "--show-toplevel") or src)
    for file in sorted(src.rglob("*.py")):
        if "__pycache__" not in file.parts:
            digest.update(str(file.relative_to(top)).encode() + b"\0" + file.read_bytes())
    return {"commit": git("log", "-1", "--format=%h", "--", ".") or "-",
            "checkout": git("rev-parse", "--short", "HEAD") or "-",
            "dirty": bool(git("status", "--porcelain", "--", ".")),
            "digest": digest.hexdigest()[:16], "path": str(src)}  # fmt: skip


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def environment(benchmark: str, parameters: Mapping[str, Any],
                packages: Iterable[str] = PACKAGES) -> dict[str, Any]:  # fmt: skip
    """The header of a results file; the caller adds ``load_after`` when it is done."""
    return {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "harness": git_commit("benchmarks"),
        "library": git_commit("src"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30),
            "system": f"{platform.system()} {platform.release()}",
        },
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
        "parameters": {key: str(value) if isinstance(value, Path) else value
                       for key, value in parameters.items()},
        "load_before": load_average(),
    }  # fmt: skip


def _commit(entry: Mapping[str, Any]) -> str:
    commit: str = entry["commit"]
    return commit + (f"+uncommitted ({entry['digest']})" if entry["dirty"] else "")


def describe(env: Mapping[str, Any]) -> str:
    """One line for a run's printed header: commits, versions, machine, load."""
    versions = ", ".join(f"{name} {value}" for name, value in env["versions"].items())
    machine = env["machine"]
    return (
        f"{env['benchmark']} on {env['date']}: harness {_commit(env['harness'])}, "
        f"src {_commit(env['library'])}; Python {env['python']}, {versions}; "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"load {env['load_before']} -> {env.get('load_after', '?')}"
    )
