"""TypeScript declarations generated from the events' JSON Schema, checked by tsc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from budget_ws import Event, EventRegistry
from budget_ws.__main__ import main
from budget_ws.typescript import typescript_declarations

ROOT = Path(__file__).resolve().parents[1]
TSC = ROOT / "node_modules" / ".bin" / "tsc"
CLIENT_TYPES = ROOT / "src" / "budget_ws" / "static" / "budget-ws.d.ts"


class Kind(str, Enum):
    INCOME = "income"
    EXPENSE = "expense"


class Article(BaseModel):
    """An article of the family budget."""

    id: int
    title: str


class FactCreated(Event, name="budget_fact_created", register=False):
    """A fact was added to a budget."""

    id: int
    amount: Decimal = Field(description="Money, as a decimal string.")
    kind: Kind
    article: Article
    at: datetime
    note: str | None = None
    tags: list[str] = []
    totals: dict[str, int] = {}
    pair: tuple[int, str] = (0, "")
    mode: Literal["a", "b"] = "a"


class FactDeleted(Event, name="budget_fact_deleted", register=False):
    id: int


REGISTRY = EventRegistry([FactCreated, FactDeleted])


def test_declarations_describe_every_event() -> None:
    declarations = typescript_declarations(REGISTRY)
    assert "export interface FactCreated {" in declarations
    assert '  "budget_fact_created": FactCreated;' in declarations
    assert "  amount: string;" in declarations  # Decimal is sent as a string
    assert "  note: string | null;" in declarations  # always present when sent
    assert "  pair: [number, string];" in declarations
    assert '  mode: "a" | "b";' in declarations
    assert 'export type Kind = "income" | "expense";' in declarations
    assert "/** Money, as a decimal string. */" in declarations
    assert "/** An article of the family budget. */" in declarations
    assert "export type BudgetWSEventName = keyof BudgetWSEvents;" in declarations


def test_command_writes_the_declarations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ts_events_module.py").write_text(
        "from budget_ws import Event, EventRegistry\n"
        "class Ping(Event, name='ts_ping', register=False):\n"
        "    n: int\n"
        "registry = EventRegistry([Ping])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    output = tmp_path / "events.d.ts"
    argv = ["typescript", "--registry", "ts_events_module:registry"]
    assert main([*argv, "-o", str(output)]) == 0
    assert '"ts_ping": Ping;' in output.read_text()
    assert main(argv) == 0
    assert capsys.readouterr().out == output.read_text()


def test_tsc_accepts_typed_use_and_rejects_mistakes(tmp_path: Path) -> None:
    if not TSC.exists():
        if os.environ.get("CI"):
            pytest.fail("tsc is missing: run `npm ci` (scripts/test does)")
        pytest.skip("tsc is missing: run `npm ci`")
    shutil.copy(CLIENT_TYPES, tmp_path / "budget-ws.d.ts")
    (tmp_path / "events.d.ts").write_text(typescript_declarations(REGISTRY))
    (tmp_path / "app.ts").write_text(
        """
import { connect } from "./budget-ws.js";
import type { BudgetWSEvents } from "./events.js";

const ws = connect<BudgetWSEvents>("/ws");
ws.on("budget_fact_created", (data) => {
  const amount: string = data.amount;
  const title: string = data.article.title;
  const kind: "income" | "expense" = data.kind;
  console.log(amount, title, kind, data.pair[1].toUpperCase());
});
ws.on("budget_fact_deleted", (data) => console.log(data.id + 1));
// @ts-expect-error: amount is a string on the wire, not a number
ws.on("budget_fact_created", (data) => { const wrong: number = data.amount; });
// @ts-expect-error: no such field
ws.on("budget_fact_deleted", (data) => data.amount);
"""
    )
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "noEmit": True,
                    "strict": True,
                    "target": "es2022",
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "lib": ["es2022", "dom"],
                },
                "files": ["app.ts"],
            }
        )
    )
    result = subprocess.run(
        [str(TSC), "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
