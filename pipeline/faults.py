"""Failpoints: named places where a process can be made to die, for fault-injection tests.

``SOP_FAILPOINTS="checkpoint.write@2,train.step@5"`` makes the process SIGKILL itself the 2nd
time it reaches ``checkpoint.write`` or the 5th time it reaches ``train.step``, whichever comes
first. A process that leads its own process group (a stage started in a new session, as a
scheduler runs jobs) takes the group with it: its Prefect server and loader workers too. Unset,
a failpoint costs one dictionary lookup.

The points:

- ``train.step``: after an optimizer step, before that step's checkpoint (if any) is written.
- ``checkpoint.write``: inside a checkpoint write, after the bytes went to the temporary file
  but before they are synced and renamed into place.
- ``outputs.write``: training finished, before a stage writes its outputs (encoder, metrics).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

from pipeline.errors import ParamsError

FAILPOINTS_ENV = "SOP_FAILPOINTS"
POINTS = ("train.step", "checkpoint.write", "outputs.write")

_hits: Counter[str] = Counter()


@cache
def _armed(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("@")
        if name not in POINTS or not count.isdigit() or int(count) < 1:
            raise ParamsError(
                f"{FAILPOINTS_ENV}={spec!r}: expected NAME@N with N >= 1 and NAME one of "
                f"{', '.join(POINTS)}"
            )
        armed[name] = int(count)
    return armed


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``SOP_FAILPOINTS`` arms ``name`` for this hit."""
    spec = os.environ.get(FAILPOINTS_ENV)
    if not spec:
        return
    armed = _armed(spec)
    if name not in armed:
        return
    _hits[name] += 1
    if _hits[name] == armed[name]:
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
