"""Typed events: pydantic models that know their wire name.

An event class names itself once, in its class statement::

    class FactCreated(Event, name="budget_fact_created"):
        id: int
        amount: Decimal

Named subclasses register themselves in :data:`default_registry`, which maps wire names
back to classes so that frames sent by clients are validated into the right model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

import pydantic
from pydantic.json_schema import models_json_schema

from .errors import EventRegistrationError, EventValidationError, UnknownEvent

__all__ = ["Event", "EventRegistry", "default_registry"]

SchemaMode = Literal["validation", "serialization"]

MAX_LISTED_ERRORS = 50
"""Validation errors listed one by one at most; beyond, only their number is given."""


class Event(pydantic.BaseModel):
    """Base class of every typed event.

    Subclass it with ``name=`` to give the event its wire name; the class is then added to
    :data:`default_registry` unless ``register=False`` is passed too. Classes without a
    name serve as abstract bases. Events are immutable (frozen) and reject unknown fields,
    so a typo in a client's payload is an error rather than a silently dropped field.
    """

    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )

    event_name: ClassVar[str]
    """The name this event carries on the wire (the frame's ``event`` field)."""

    def __init_subclass__(cls, name: str | None = None, register: bool = True, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise EventRegistrationError(
                    f"{cls.__qualname__}: the event name must be a non-empty string"
                )
            cls.event_name = name
        # Remember whether *this* class was named, so that subclasses of a named event do
        # not silently register a second class under the inherited name.
        cls.__budget_ws_register__ = name is not None and register

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Registration waits until pydantic has finished building the class, so the
        # registry never holds a half-built model.
        kwargs.pop("name", None)
        kwargs.pop("register", None)
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__dict__.get("__budget_ws_register__"):
            default_registry.register(cls)

    __budget_ws_register__: ClassVar[bool] = False


class EventRegistry:
    """Maps wire names to event classes.

    Used to validate frames that clients send (the wire name picks the class, pydantic
    validates the data) and to export the JSON Schema of every event an app speaks.

    Args:
        events: Event classes to register at once.
    """

    def __init__(self, events: Iterable[type[Event]] = ()) -> None:
        self._classes: dict[str, type[Event]] = {}
        for event_class in events:
            self.register(event_class)

    def register(self, event_class: type[Event]) -> type[Event]:
        """Add an event class; usable as a class decorator.

        Registering the same class twice is harmless, and a class re-created under the same
        module and qualified name (a module reload) replaces its older self.

        Raises:
            EventRegistrationError: The class has no wire name, or another class already
                uses its wire name.
        """
        if not (isinstance(event_class, type) and issubclass(event_class, Event)):
            raise EventRegistrationError(f"{event_class!r} is not a subclass of budget_ws.Event")
        name = getattr(event_class, "event_name", None)
        if not name:
            raise EventRegistrationError(
                f"{event_class.__qualname__} has no wire name: declare it with "
                f"`class {event_class.__name__}(Event, name='...')`"
            )
        existing = self._classes.get(name)
        if (
            existing is not None
            and existing is not event_class
            and _origin(existing) != _origin(event_class)
        ):
            raise EventRegistrationError(
                f"event name {name!r} is already used by {_origin(existing)}; "
                f"{_origin(event_class)} needs another name"
            )
        self._classes[name] = event_class
        return event_class

    def get(self, name: str) -> type[Event]:
        """Return the class registered under ``name``.

        Raises:
            UnknownEvent: Nothing is registered under that name.
        """
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownEvent(f"no event is registered under the name {name!r}") from None

    def validate(self, name: str, data: object) -> Event:
        """Validate ``data`` into an instance of the class registered under ``name``.

        Raises:
            UnknownEvent: Nothing is registered under that name.
            EventValidationError: The data does not match the event's schema.
        """
        event_class = self.get(name)
        try:
            return event_class.model_validate(data)
        except pydantic.ValidationError as exc:
            count = exc.error_count()
            if count > MAX_LISTED_ERRORS:
                # Listing thousands of errors (a client's frame of unknown keys) costs many
                # times the validation itself: count them instead.
                message = f"invalid {name!r} event: {count} errors"
                raise EventValidationError(name, message, []) from None
            listed = exc.errors(include_url=False, include_input=False)
            summary = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
                for error in listed[:5]
            )
            errors: list[dict[str, object]] = [
                {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
                for error in listed
            ]
            more = f"; and {count - 5} more" if count > 5 else ""
            message = f"invalid {name!r} event: {summary}{more}"
            raise EventValidationError(name, message, errors) from None

    def json_schema(self, mode: SchemaMode = "serialization") -> dict[str, Any]:
        """Return one JSON Schema (draft 2020-12) that accepts every registered event frame.

        Each alternative of the top-level ``oneOf`` is an event frame
        ``{"event": <name>, "data": {...}}``; the data models live under ``$defs``.

        Args:
            mode: ``"serialization"`` describes what the server sends (what a browser
                receives); ``"validation"`` describes what the server accepts.
        """
        names = sorted(self._classes)
        classes = [self._classes[name] for name in names]
        refs, definitions = models_json_schema(
            [(event_class, mode) for event_class in classes],
            ref_template="#/$defs/{model}",
        )
        frames = [
            {
                "title": name,
                "type": "object",
                "properties": {
                    "event": {"const": name},
                    "data": refs[(event_class, mode)],
                },
                "required": ["event", "data"],
            }
            for name, event_class in zip(names, classes, strict=False)
        ]
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "budget_ws events",
            "oneOf": frames,
            "$defs": definitions.get("$defs", {}),
        }

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[type[Event]]:
        return iter(list(self._classes.values()))

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> list[str]:
        """Return the registered wire names, sorted."""
        return sorted(self._classes)


def _origin(event_class: type[Event]) -> str:
    return f"{event_class.__module__}.{event_class.__qualname__}"


default_registry = EventRegistry()
"""The registry that named :class:`Event` subclasses join when they are defined."""
