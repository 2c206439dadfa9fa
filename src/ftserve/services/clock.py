"""Wall-clock time in the unit the wire uses."""

from __future__ import annotations

import time


def now() -> int:
    return int(time.time())
