"""How the CLI shows values that several commands print."""

from __future__ import annotations

import os
from datetime import datetime

from rich.console import Console
from rich.table import Table

# Written to a pipe or a file, output is not cut at 80 columns: ids and names stay whole for grep and logs.
PIPE_WIDTH = 200


def output() -> Console:
    """Where a command prints; made per command, so that it writes to the stdout of the moment."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def listing(*columns: str) -> Table:
    """A plain table whose first column (an id) never wraps and whose cells fold rather than lose text."""
    table = Table(*columns, box=None)
    for column in table.columns:
        column.overflow = "fold"
    table.columns[0].no_wrap = True
    return table


def timestamp(seconds: int | None) -> str:
    """A Unix time as local date and time, to the minute; empty for none."""
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float) -> str:
    """`42s`, `3m 05s`, `1h 02m`: as precise as a human reads an estimate."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
