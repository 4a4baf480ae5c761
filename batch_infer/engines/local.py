"""The local engine: fragments run in a thread pool of this process (``executor``).

It decides only where ``fragment.run_fragment`` runs; what a fragment does is the same on Dask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ..executor import available_cores, library_threads, run_parallel
from ..fragment import FragmentJob, RejectBudget, StagedFragment, run_fragment
from ..inputs import Fragment


def run_fragments(
    job: FragmentJob,
    fragments: Iterable[Fragment],
    workers: int,
    on_result: Callable[[Fragment, StagedFragment], None],
    cancel: threading.Event,
    budget: RejectBudget,
) -> None:
    """Run every fragment, ``workers`` at a time; ``on_result`` as each one is staged."""
    with library_threads(workers, available_cores()):
        run_parallel(
            lambda fragment: (fragment, run_fragment(fragment, job, cancel, budget)),
            fragments,
            workers,
            on_result=lambda pair: on_result(*pair),
            cancel=cancel,
        )
