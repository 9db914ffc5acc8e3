"""Typed events: naming, registration, validation and JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from budget_ws import (
    Event,
    EventRegistrationError,
    EventRegistry,
    EventValidationError,
    UnknownEvent,
    default_registry,
)


class ArticleUpdated(Event, name="test_events_article_updated"):
    id: int
    title: str


class Unregistered(Event, name="test_events_unregistered", register=False):
    value: Decimal


class Base(Event):
    """A nameless base is abstract: it has no wire name and does not register."""

    budget_id: int


class Derived(Base, name="test_events_derived"):
    amount: Decimal


class Renamed(Derived, name="test_events_renamed"):
    note: str = ""


def test_named_events_join_the_default_registry() -> None:
    assert ArticleUpdated.event_name == "test_events_article_updated"
    assert default_registry.get("test_events_article_updated") is ArticleUpdated
    assert "test_events_unregistered" not in default_registry
    assert "test_events_derived" in default_registry
    assert default_registry.get("test_events_renamed") is Renamed
    assert Base not in list(default_registry)


def test_events_are_frozen_and_reject_unknown_fields() -> None:
    event = ArticleUpdated(id=1, title="Rent")
    with pytest.raises(Exception, match="frozen"):
        event.title = "x"  # type: ignore[misc]
    with pytest.raises(Exception, match="Extra inputs"):
        ArticleUpdated(id=1, title="Rent", tilte="typo")  # type: ignore[call-arg]


def test_subclass_of_a_named_event_without_a_name_does_not_register_twice() -> None:
    class Quiet(ArticleUpdated):
        pass

    assert default_registry.get("test_events_article_updated") is ArticleUpdated
    assert Quiet.event_name == "test_events_article_updated"


def test_bad_names_are_rejected() -> None:
    with pytest.raises(EventRegistrationError, match="non-empty"):

        class Empty(Event, name=""):
            pass


def test_name_conflicts_are_errors_but_re_registration_is_not() -> None:
    registry = EventRegistry([ArticleUpdated])
    registry.register(ArticleUpdated)
    assert len(registry) == 1

    class Impostor(Event, name="test_events_article_updated", register=False):
        pass

    with pytest.raises(EventRegistrationError, match="already used"):
        registry.register(Impostor)
    with pytest.raises(EventRegistrationError, match="no wire name"):
        registry.register(Base)
    with pytest.raises(EventRegistrationError, match="not a subclass"):
        registry.register(dict)  # type: ignore[arg-type]


def test_a_reloaded_class_replaces_its_older_self() -> None:
    registry = EventRegistry()

    def define() -> type[Event]:
        class Reloaded(Event, name="test_events_reloaded", register=False):
            x: int

        return Reloaded

    first, second = define(), define()
    registry.register(first)
    registry.register(second)
    assert registry.get("test_events_reloaded") is second


def test_register_works_as_a_decorator() -> None:
    registry = EventRegistry()

    @registry.register
    class Decorated(Event, name="test_events_decorated", register=False):
        pass

    assert registry.names() == ["test_events_decorated"]
    assert Decorated in list(registry)


def test_validate_picks_the_class_by_name() -> None:
    registry = EventRegistry([ArticleUpdated, Unregistered])
    event = registry.validate("test_events_unregistered", {"value": "1.50"})
    assert event == Unregistered(value=Decimal("1.50"))
    with pytest.raises(UnknownEvent, match="nope"):
        registry.validate("nope", {})


def test_validation_errors_say_where_and_why() -> None:
    registry = EventRegistry([ArticleUpdated])
    with pytest.raises(EventValidationError) as info:
        registry.validate("test_events_article_updated", {"id": "x"})
    error = info.value
    assert error.event == "test_events_article_updated"
    assert {tuple(item["loc"]) for item in error.errors} == {("id",), ("title",)}  # type: ignore[arg-type]
    assert "id:" in str(error)
    json.dumps(error.errors)  # serialisable into an error frame
    with pytest.raises(EventValidationError, match="root"):
        registry.validate("test_events_article_updated", "not an object")


def test_json_schema_describes_every_frame() -> None:
    registry = EventRegistry([ArticleUpdated, Derived])
    schema = registry.json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    titles = [frame["title"] for frame in schema["oneOf"]]
    assert titles == ["test_events_article_updated", "test_events_derived"]
    frame = schema["oneOf"][1]
    assert frame["properties"]["event"] == {"const": "test_events_derived"}
    data_ref = frame["properties"]["data"]["$ref"]
    derived = schema["$defs"][data_ref.rsplit("/", 1)[1]]
    assert set(derived["required"]) == {"budget_id", "amount"}
    validation = registry.json_schema("validation")
    assert validation["$defs"] != schema["$defs"], "Decimal is a string only when serialised"


def test_schema_command_prints_the_registry(tmp_path: Path) -> None:
    module = tmp_path / "schema_events_module.py"
    module.write_text(
        textwrap.dedent(
            """
            from budget_ws import Event, EventRegistry

            class FactDeleted(Event, name="budget_fact_deleted"):
                id: int

            registry = EventRegistry([FactDeleted])
            """
        )
    )
    command = [sys.executable, "-m", "budget_ws", "schema", "schema_events_module"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True)
    schema = json.loads(result.stdout)
    assert [frame["title"] for frame in schema["oneOf"]] == ["budget_fact_deleted"]

    explicit = subprocess.run(
        [
            sys.executable,
            "-m",
            "budget_ws",
            "schema",
            "--registry",
            "schema_events_module:registry",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(explicit.stdout) == schema

    missing = subprocess.run(
        [sys.executable, "-m", "budget_ws", "schema", "no_such_module_here"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "no_such_module_here" in missing.stderr


def test_schema_command_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from budget_ws.__main__ import main

    (tmp_path / "in_process_events.py").write_text(
        "from budget_ws import EventRegistry\nregistry = EventRegistry()\nnot_a_registry = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["schema", "--registry", "in_process_events", "--mode", "validation"]) == 0
    assert json.loads(capsys.readouterr().out)["oneOf"] == []
    with pytest.raises(SystemExit, match=r"not a budget_ws\.EventRegistry"):
        main(["schema", "--registry", "in_process_events:not_a_registry"])
    with pytest.raises(SystemExit, match=r"not a budget_ws\.EventRegistry"):
        main(["schema", "--registry", "in_process_events:missing"])
