"""The README's second command, `./scripts/test`, names the system tools it misses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_machine_without_redis_node_or_npm_is_told_what_to_install(tmp_path: Path) -> None:
    # A PATH with the shell and Python, and none of the other tools the suite needs.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "python3"):
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is needed to run scripts/test at all")
        (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test")],
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "these system tools are missing" in result.stderr
    for hint in ("redis-server", "redis-cli (apt-get install redis-tools)", "Node.js", "npm"):
        assert hint in result.stderr
    assert result.stdout == ""  # it stopped before installing or testing anything
