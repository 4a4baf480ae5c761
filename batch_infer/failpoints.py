"""Named points where tests kill the process, to prove every stage is crash-safe.

``BATCH_INFER_FAILPOINT=<name>`` makes the process SIGKILL itself the first time it reaches the
point of that name: no cleanup, no ``finally``, exactly like ``kill -9`` or a lost machine.
Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after-plan",  # footers read, lock taken, run recorded, nothing staged
    "mid-fragment",  # a part file is open and half written
    "between-fragments",  # some fragments staged and recorded, others not started
    "mid-commit",  # some files moved to their final names, others still staged
    "before-manifest",  # every file in place, no manifest yet
    "before-success",  # manifest written, _SUCCESS not yet (tables: commit planned, table unchanged)
    "after-success",  # committed; replaced files and staging not yet cleaned up (tables: the
    # table commit made, the run's records not yet cleaned)
)


def reached(name: str) -> None:
    if os.environ.get("BATCH_INFER_FAILPOINT") == name and _first_time():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_time() -> bool:
    """With ``BATCH_INFER_FAILPOINT_ONCE=<file>``, only the first process to get here dies (it
    creates the file): one Dask worker killed, its replacement left to finish the work."""
    marker = os.environ.get("BATCH_INFER_FAILPOINT_ONCE")
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
