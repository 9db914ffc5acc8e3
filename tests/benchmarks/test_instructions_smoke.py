"""The instruction-count benchmark runs for real on a tiny case under valgrind.

Two callgrind runs of one contender and one mode (about 15 s): it asserts that a
positive number of instructions per delivery comes out, nothing about how many.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

instructions = importlib.import_module("benchmarks.instructions")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
@pytest.mark.timeout(120)  # ~15 s alone; a loaded machine slows callgrind down a lot more
def test_instructions_per_delivery_are_counted(tmp_path: Path) -> None:
    results = tmp_path / "instructions.json"

    code = instructions.main(["--connections", "20", "--events", "3", "--rounds", "1", "2",
                              "--contenders", "budget_ws", "--modes", "paced",
                              "--json-file", str(results)])  # fmt: skip

    assert code == 0
    report = json.loads(results.read_text())
    assert report["environment"]["benchmark"] == "instructions"
    assert "load_after" in report["environment"]
    assert [(run["rounds"], run["complete"]) for run in report["runs"]] == [(1, True), (2, True)]
    assert all(run["instructions"] > 0 for run in report["runs"])
    (row,) = report["rows"]
    assert (row["contender"], row["mode"], row["connections"]) == ("budget_ws", "paced", 20)
    assert row["instructions_per_delivery"] > 0
    assert report["verdicts"] == []  # no observed run: nothing to hold to a target


def test_without_valgrind_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)

    assert instructions.main(["--contenders", "budget_ws"]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err
