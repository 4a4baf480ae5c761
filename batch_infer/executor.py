"""Run fragments side by side: a bounded thread pool sized to the cores.

Threads, not processes: reading, decoding, compressing and the models' numeric kernels all release
the GIL, the model is shared instead of copied, and memory stays one process's. Libraries that
thread themselves (BLAS, OpenMP in HistGradientBoosting) are limited with threadpoolctl so that
``workers x library threads`` never exceeds the cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def library_threads(workers: int, cores: int) -> Iterator[None]:
    """Give each worker an equal share of the cores for BLAS/OpenMP threads."""
    if workers <= 1:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, cores // workers)):
        yield


def run_parallel(
    task: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    on_result: Callable[[Result], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Result]:
    """Apply ``task`` to every item with at most ``workers`` running and ``2 x workers`` queued.

    Results come back in completion order. The first failure cancels what has not started,
    waits for what is running, and is raised.
    """
    results: list[Result] = []
    if workers <= 1:
        for item in items:
            result = task(item)
            results.append(result)
            if on_result:
                on_result(result)
        return results
    pending: set[Future[Result]] = set()
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-infer") as pool:
        try:
            while True:
                while len(pending) < 2 * workers:
                    item = next(iterator, _DONE)
                    if item is _DONE:
                        break
                    pending.add(pool.submit(task, item))  # type: ignore[arg-type]
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    results.append(result)
                    if on_result:
                        on_result(result)
        except BaseException:
            if cancel is not None:
                cancel.set()  # running tasks stop at their next batch
            for future in pending:
                future.cancel()
            raise
    return results


_DONE = object()


def map_concurrently(
    function: Callable[[Item], Result], items: list[Item], concurrency: int
) -> list[Result]:
    """``[function(item) for item in items]``, in order, at most ``concurrency`` calls at a time
    (file operations of a commit, footers of many files)."""
    indexed = run_parallel(
        lambda pair: (pair[0], function(pair[1])),
        list(enumerate(items)),
        min(concurrency, len(items)),
    )
    return [result for _, result in sorted(indexed, key=lambda pair: pair[0])]
