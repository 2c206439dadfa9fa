"""The one check that a caller's text fits the column it is stored in.

PostgreSQL refuses a value longer than its `VARCHAR(n)` (SQLite stores anything), and neither stores a NUL
character or half a surrogate pair; either would fail the insert with a 500. The length is read from the
schema in tables.py, so a column that grows needs no second edit here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ftserve.domain.errors import InvalidRequest
from ftserve.store.database import storable


def check_fits(column: sa.Column[Any], text: str, param: str) -> None:
    """Refuse, with a 400 naming `param`, text that `column` cannot hold."""
    limit = getattr(column.type, "length", None)
    if limit is not None and len(text) > limit:
        raise InvalidRequest(f"{param} is {len(text)} characters long; at most {limit} are allowed.", param=param)
    if not storable(text):
        raise InvalidRequest(f"{param} holds a NUL character or half a surrogate pair, which cannot be stored.",
                             param=param)
