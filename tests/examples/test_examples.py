"""The examples run as documented and print what the README and the docs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> list[str]:
    """Run an example in a fresh interpreter; return its output lines, stripped."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return [line.strip() for line in result.stdout.splitlines()]


def test_quickstart_publishes_and_the_client_receives() -> None:
    lines = run_example("quickstart.py")
    assert lines[0] == "published budget_fact_created at offset 1"
    assert lines[1].startswith(
        'the browser received: {"event": "budget_fact_created", '
        '"data": {"id": 7, "amount": "12.50"}, "topic": "budget:42", "offset": 1, "epoch": '
    )


def test_terminal_demo_tells_the_whole_story() -> None:
    lines = run_example("terminal_demo.py")
    fact_1 = 'budget:1 #1 budget_fact_created {"id":1,"article_id":3,"amount":"54.20"}'

    # authorize keeps Bob out of Alice's budget, with an error frame rather than silence.
    assert (
        "bob/tab-1   subscribe budget:1 -> error forbidden: "
        "not allowed to subscribe to 'budget:1'" in lines
    )
    # Both of Alice's tabs get her events once; Bob's first event is from his own budget.
    assert lines.count(f"alice/tab-1 <- {fact_1}") == 1
    assert lines.count(f"alice/tab-2 <- {fact_1}") == 1
    assert (
        'bob/tab-1   <- budget:2 #1 budget_fact_created {"id":2,"article_id":4,"amount":"9.99"}'
        in lines
    )
    # A client-sent event went through its handler to every tab of the budget.
    assert 'alice/tab-2 <- budget:1 #3 article_updated {"id":3,"name":"Food"}' in lines

    # Tab 2 reconnects and recovers exactly the two events it missed, in order.
    resumed = lines.index(
        "alice/tab-2 subscribe budget:1 -> subscribed budget:1 at offset 5, recovered: true"
    )
    assert lines[resumed + 1 : resumed + 3] == [
        'alice/tab-2 <- budget:1 #4 budget_fact_deleted {"id":1}',
        'alice/tab-2 <- budget:1 #5 budget_fact_created {"id":3,"article_id":3,"amount":"61.00"}',
    ]

    assert "published                 6" in lines
    assert "slow_consumer_disconnects 0" in lines
    # Shutdown tells every tab to reconnect elsewhere.
    assert sum(line.endswith("closed: 1012 server shutting down") for line in lines) == 3


def test_the_readme_shows_the_quickstart_as_it_is() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    first_python_block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert first_python_block == (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")
