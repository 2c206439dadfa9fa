"""`python -m ftserve.engine SPEC.json`: run one job, reporting JSON lines on stdout.

Exit status 0 means the job finished or stopped as asked; 1 means it failed, and the last line
on stdout is a `failed` event with the reason.

Started by torchrun (`providers.local.engine_command`) as several processes, the job trains across them; rank 0
alone reports on stdout and reads the commands on stdin, which all the processes inherit.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from ftserve.engine import distributed, dpo, grpo, sft
from ftserve.engine.data import DataError
from ftserve.engine.events import Failed
from ftserve.engine.memory import OverBudget
from ftserve.engine.models import ModelUnavailable
from ftserve.engine.sink import JsonLinesSink, Sink
from ftserve.engine.spec import JobSpec

RECIPES = {"supervised": sft.run, "dpo": dpo.run, "reinforcement": grpo.run}


def run(spec: JobSpec, sink: Sink) -> int:
    try:
        RECIPES[spec.method](spec, sink)
    except (DataError, ModelUnavailable, OverBudget) as error:
        sink.emit(Failed(message=str(error)))
        return 1
    except Exception as error:  # the job boundary: report anything, with its traceback on stderr
        traceback.print_exc()
        sink.emit(Failed(message=f"Training crashed: {type(error).__name__}: {error}"))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ftserve.engine SPEC.json", file=sys.stderr)
        return 2
    spec = JobSpec.model_validate_json(Path(args[0]).read_text())
    # Events own the real stdout; anything a library prints goes to stderr instead.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        ranks = distributed.join(spec.device)
    except distributed.Unplaceable as error:
        if error.main:
            JsonLinesSink(events).emit(Failed(message=str(error)))
        return 1
    status = run(spec, distributed.SharedStop(JsonLinesSink(events, sys.stdin) if ranks.main else None, ranks))
    if status == 0:  # a failed process leaves the others to torchrun, which stops them
        ranks.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
