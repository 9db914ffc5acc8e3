"""What users type into the forms, checked before it reaches the database."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["ArticleName", "FactForm", "FactInput", "InvalidInput"]

# Up to a billion, at most two decimals; a comma is accepted as the decimal separator.
_AMOUNT = re.compile(r"(-?)([0-9]{1,9})(?:[.,]([0-9]{1,2}))?")  # not \d: it matches any script
MAX_ARTICLE_NAME = 40


class InvalidInput(ValueError):
    """The form cannot be saved; ``errors`` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class FactInput:
    """A budget fact as the database takes it: checked, but not yet against the budget."""

    amount: Decimal
    article_id: int
    financial_center_id: int


@dataclass
class FactForm:
    """The new-fact and edit-fact forms: the raw values, as typed, and their errors."""

    amount: str = ""
    article_id: str = ""
    financial_center_id: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    def parse(self) -> FactInput:
        """Check every field.

        Raises:
            InvalidInput: One or more fields are wrong; every one of them is reported.
        """
        errors: dict[str, str] = {}
        amount = parse_amount(self.amount, errors)
        article_id = parse_choice(self.article_id, "article_id", "Choose an article.", errors)
        financial_center_id = parse_choice(
            self.financial_center_id, "financial_center_id", "Choose a financial center.", errors
        )
        if amount is None or article_id is None or financial_center_id is None:
            raise InvalidInput(errors)
        return FactInput(amount, article_id, financial_center_id)


def parse_amount(text: str, errors: dict[str, str]) -> Decimal | None:
    match = _AMOUNT.fullmatch(text.strip())
    if match is None:
        errors["amount"] = "Amount must be a number with at most two decimals, like 12.50."
        return None
    sign, units, cents = match.groups()
    amount = Decimal(f"{sign}{units}.{(cents or '').ljust(2, '0')}")
    if amount == 0:
        errors["amount"] = "Amount must not be zero."
        return None
    return amount


def parse_choice(text: str, name: str, message: str, errors: dict[str, str]) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        errors[name] = message
        return None
    return int(text)


@dataclass
class ArticleName:
    """The rename form of one article."""

    name: str = ""
    error: str = ""

    def parse(self) -> str:
        """Return the name, trimmed.

        Raises:
            InvalidInput: The name is empty or too long.
        """
        name = " ".join(self.name.split())
        if not name:
            raise InvalidInput({"name": "An article needs a name."})
        if len(name) > MAX_ARTICLE_NAME:
            raise InvalidInput({"name": f"At most {MAX_ARTICLE_NAME} characters, please."})
        return name
