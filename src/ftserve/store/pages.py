"""Cursor pages: `after=<id>` continues after the object with that id, in the list's own order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import sqlalchemy as sa

from ftserve.domain.errors import NotFound
from ftserve.store.database import storable

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


def select_page(
    conn: sa.Connection,
    table: sa.Table,
    where: Sequence[sa.ColumnElement[bool]],
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    id_column: str = "id",
) -> Page[sa.Row]:
    """One page of `table` rows matching `where`, ordered by insertion; one extra row tells `has_more`."""
    conditions = list(where)
    if after is not None:
        cursor = conn.execute(
            sa.select(table.c.seq).where(table.c[id_column] == after, *where)
        ).scalar_one_or_none() if storable(after) else None
        if cursor is None:
            raise NotFound(f"No object with id '{after}' to page after.", param="after")
        conditions.append(table.c.seq < cursor if newest_first else table.c.seq > cursor)
    order = table.c.seq.desc() if newest_first else table.c.seq.asc()
    rows = conn.execute(sa.select(table).where(*conditions).order_by(order).limit(limit + 1)).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)
