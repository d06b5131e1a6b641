"""Keyset paging: every list that grows is read in pages that follow its sort key.

A page is the rows after a cursor in the list's own order, never the rows after a position:
with `offset`, an alert opened between two requests pushes the rows down one place and the
next page repeats one, and a device that leaves a filtered list pulls them up and another is
never shown. After a cursor, a row is on the page its own sort key puts it on, whatever else
changed; a row whose key changes between two requests (a device's state, in a list filtered by
state) is seen once or not at all, as it should be, and takes no other row with it.

The cursor is the sort key of the last row of a page, the last part of which is unique (an id),
written opaquely: base64url of the JSON list `[list name, key values...]`. Clients pass it back
as it is (`after=`); the list name stops a cursor of one list being used on another.

Plain SQL expressions and values: no FastAPI here, so that the domain queries and the pages
use it as the API does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, and_, bindparam, or_

from fleet.protocol.messages import INT64_MAX, INT64_MIN

# Longer than any cursor a list makes (a timestamp, a name and an id, base64url-encoded), and
# short enough that a forged one is refused before it is decoded.
MAX_CURSOR_CHARS = 512
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"

# "int": a 64-bit id; "int32": an id in a 32-bit column (PostgreSQL refuses a larger number
# there outright, even to compare).
KeyKind = Literal["int", "int32", "str", "datetime", "date"]
INT32_MAX = 2**31 - 1
Row = TypeVar("Row")


class BadCursor(ValueError):
    """A cursor that this list did not make: forged, cut short, or of another list."""


@dataclass(frozen=True)
class SortKey:
    """One column of a list's order: the column, how its values are written in a cursor, and
    whether the list runs from the largest value down."""

    column: Any  # a mapped column or a SQL expression
    kind: KeyKind
    descending: bool = False


@dataclass(frozen=True)
class Page(Generic[Row]):
    """One page of a list: its rows, the cursor of the next page (None on the last), and, for
    the lists that count them, how many rows match in all at the time of this page."""

    items: list[Row]
    next: str | None
    total: int | None = None


class Order:
    """A list's total order, by its sort keys; the last key is unique (an id), so no two rows
    share a place and a cursor names exactly one gap between rows.

    `name` is written into the cursors this order makes, and checked on the way back."""

    def __init__(self, name: str, *keys: SortKey) -> None:
        """`keys`: the sort keys in order, the last one unique. Raises ValueError when none is
        given."""
        if not keys:
            raise ValueError("an order needs at least one sort key, the last of them unique")
        self.name = name
        self.keys = keys

    def order_by(self) -> list[Any]:
        """The ORDER BY clauses, in order."""
        return [k.column.desc() if k.descending else k.column.asc() for k in self.keys]

    def after(self, cursor: str) -> ColumnElement[bool]:
        """The condition for the rows strictly after the cursor in this order.

        Raises BadCursor when the cursor was not made by this order."""
        return self._after(self.decode(cursor))

    def after_bound(self) -> ColumnElement[bool]:
        """`after`'s condition with the cursor's key values left as bound parameters named
        `after_0`, `after_1`, ... (`bound_values` gives them): for a statement built once and
        run with many cursors, so that it is not built again for every page."""
        return self._after([bindparam(f"after_{i}") for i in range(len(self.keys))])

    def bound_values(self, cursor: str) -> dict[str, Any]:
        """The parameters of `after_bound` for this cursor. Raises BadCursor."""
        return {f"after_{i}": v for i, v in enumerate(self.decode(cursor))}

    def _after(self, values: Sequence[Any]) -> ColumnElement[bool]:
        # (k1, k2, k3) after (v1, v2, v3): k1 beyond v1, or k1 = v1 and k2 beyond v2, or ...
        # Written out rather than as a row-value comparison, which needs every key to run the
        # same way.
        branches = []
        for i, key in enumerate(self.keys):
            equal = [self.keys[j].column == values[j] for j in range(i)]
            beyond = key.column < values[i] if key.descending else key.column > values[i]
            branches.append(and_(*equal, beyond))
        return or_(*branches)

    def cursor(self, values: Sequence[Any]) -> str:
        """The cursor just after a row whose sort key is `values` (one value per key)."""
        if len(values) != len(self.keys):
            raise ValueError(f"{self.name}: {len(values)} key values for {len(self.keys)} keys")
        written = [
            self.name,
            *(_write(key.kind, v) for key, v in zip(self.keys, values, strict=True)),
        ]
        text = json.dumps(written, separators=(",", ":"), ensure_ascii=True)
        return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str) -> list[Any]:
        """The key values a cursor holds. Raises BadCursor."""
        if len(cursor) > MAX_CURSOR_CHARS:
            raise self._bad("it is too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            written = json.loads(raw.decode("ascii"))
        except (binascii.Error, ValueError):
            raise self._bad("it is not one this API wrote") from None
        if not isinstance(written, list) or not written or written[0] != self.name:
            raise self._bad("it belongs to another list")
        if len(written) != len(self.keys) + 1:
            raise self._bad("it has the wrong number of parts")
        return [
            _read(key.kind, v, self._bad) for key, v in zip(self.keys, written[1:], strict=True)
        ]

    def page(
        self,
        rows: Sequence[Row],
        limit: int,
        key: Callable[[Row], Sequence[Any]],
        total: int | None = None,
    ) -> Page[Row]:
        """A page from up to `limit + 1` rows read in this order: the first `limit`, and the
        cursor after the last of them when a further row showed there is more."""
        items = list(rows[:limit])
        more = len(rows) > limit and bool(items)
        return Page(items, self.cursor(key(items[-1])) if more else None, total)

    def _bad(self, why: str) -> BadCursor:
        return BadCursor(
            f"'after' is not a cursor of the {self.name} list ({why}): pass the 'next' cursor "
            "of the previous page as it was given, or leave 'after' out to start from the top"
        )


def _write(kind: KeyKind, value: Any) -> Any:
    if kind in ("datetime", "date"):
        return value.isoformat()
    return value


def _read(kind: KeyKind, value: Any, bad: Callable[[str], BadCursor]) -> Any:
    if kind in ("int", "int32"):
        # bool is an int to Python, and a JSON number past the column's width fits no id.
        high = INT32_MAX if kind == "int32" else INT64_MAX
        if type(value) is not int or not INT64_MIN <= value <= high:
            raise bad("an id in it is out of range")
        return value
    if not isinstance(value, str) or len(value) > MAX_CURSOR_CHARS:
        raise bad("a value in it is not text")
    if kind == "str":
        return value
    try:
        if kind == "date":
            return date.fromisoformat(value)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad("a time in it is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise bad("a time in it has no timezone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise bad("a time in it is out of range") from None
