"""The Dask engine: each fragment is one task running ``fragment.run_fragment`` on a worker.

Planning, the lock, the resume records' reading, reject limits and the commit stay on the client;
a task reads its row group, scores it and stages its output on the output's store, exactly as a
thread of the local engine does, so staging is engine-independent and a run resumes on either.
The model is never pickled into tasks: each worker process loads it once from its URL, pinned to
the sha256 the client loaded (``ModelRef``), and keeps it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import storage
from ..errors import BatchInferError, ConfigError, EngineUnavailable, ModelError, first_line
from ..fragment import Cancelled, RejectBudget, run_fragment
from ..model import load_model
from ..targets import is_reject_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the client's model itself, and the key it is kept under."""

    config: Any  # ModelConfig, pinned to the sha256 of the files the client loaded
    columns: Any
    methods: list[str] | None
    runtime: str  # "sklearn" or "compiled": the worker uses what the client used

    @property
    def key(self) -> str:
        return "|".join(
            str(part)
            for part in (
                self.config.sha256,
                self.config.scaler_sha256,
                self.config.contract,
                self.methods,
                self.runtime,
                self.columns,
            )
        )


def model_ref(model: Any, config: Any, columns: Any, methods: list[str] | None) -> ModelRef:
    pinned = config.model_copy(
        update={
            "sha256": model.sha256,
            "scaler_sha256": model.scaler.sha256 if model.scaler else None,
            "runtime": "sklearn" if model.runtime == "sklearn" else "compiled",
        }
    )
    return ModelRef(pinned, columns, methods, pinned.runtime)


_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(ref: ModelRef) -> Any:
    """The model, loaded once per worker process (and per model), then kept."""
    with _MODELS_LOCK:
        model = _MODELS.get(ref.key)
        if model is not None:
            return model
        try:
            model = load_model(ref.config, ref.columns, ref.methods, ref.runtime)
        except BatchInferError as exc:
            raise ModelError(f"on Dask worker {_worker_name()}: {exc.what}", exc.fix) from None
        except Exception as exc:
            raise ModelError(
                f"Dask worker {_worker_name()} cannot load the model: "
                f"{type(exc).__name__}: {first_line(exc)}",
                "install on every worker what the client has (batch-infer, scikit-learn and the "
                "model's own packages, same versions)",
            ) from None
        _MODELS[ref.key] = model
        return model


def _worker_name() -> str:
    try:
        from distributed import get_worker  # the [dask] extra, present on workers

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def score_on_worker(fragment: Any, job: Any, ref: ModelRef) -> tuple[Any, str]:
    """The task: the same ``run_fragment`` (score, stage, record) as the local engine."""
    job = replace(job, model=worker_model(ref))
    return run_fragment(fragment, job), _worker_name()


@dataclass
class DaskStats:
    """What the run report says about the cluster."""

    scheduler: str = ""
    workers: set[str] = field(default_factory=set)
    task_retries: int = 0
    worker_peak_rss_mib: float | None = None  # the largest peak RSS among the worker processes


def scheduler_address(engine: Any) -> str | None:
    """``engine.scheduler``, else Dask's own configuration; None means a LocalCluster."""
    if engine.scheduler:
        return engine.scheduler
    import dask  # the [dask] extra: imported only when this engine runs

    return dask.config.get("scheduler-address", None)


def check_reachable(engine: Any, urls: dict[str, Any]) -> None:
    """Workers on other hosts cannot see this machine's files: refuse before anything runs.

    ``urls`` maps what a path is ("input", "output", "model") to (url, filesystem).
    """
    remote = scheduler_address(engine) is not None
    for role, (url, fs) in urls.items():
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "memory" in protocols:
            raise ConfigError(
                f"the {role} {url} is in this process's memory, which Dask worker processes "
                "cannot see",
                "use a path or URL every worker can reach, or --engine local",
            )
        if remote and storage.is_local(fs) and not engine.shared_filesystem:
            raise ConfigError(
                f"the {role} {url} is a local path, but the Dask scheduler "
                f"{scheduler_address(engine)} may run tasks on other hosts",
                "use a URL every worker can reach (s3://...), or set engine.shared_filesystem: "
                "true if the path is shared (NFS, or all workers on this machine)",
            )


def run_fragments(
    engine: Any,
    job: Any,
    ref: ModelRef,
    fragments: Iterable[Any],
    on_result: Callable[[Any, Any], None],
    cancel: threading.Event,
    cores: int,
    budget: RejectBudget,
) -> DaskStats:
    """Run every fragment as a task; ``on_result(fragment, staged)`` on the client as each ends.

    The reject limit holds across workers: rejects are counted here, as tasks end. An exception
    from counting them or from a task cancels what is left. A task
    whose workers keep dying (Dask's ``allowed-failures``) ends the run with exit 75.
    """
    # the [dask] extra: imported only when this engine runs
    from distributed import Client, LocalCluster
    from distributed.scheduler import KilledWorker

    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)  # the cluster's chatter is not ours
    address = scheduler_address(engine)
    stats = DaskStats(scheduler=address or "LocalCluster")
    cluster = None
    try:
        if address:
            client = Client(address, timeout="30s", set_as_default=False)
        else:
            cluster = LocalCluster(
                n_workers=engine.workers or cores,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # the scheduler's HTTP server (metrics) on a free port: its default, 8787, may
                # be another cluster's, and taking it warns
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.ERROR,
            )
            client = Client(cluster, set_as_default=False)
            stats.scheduler = f"LocalCluster {cluster.scheduler_address}"
    except OSError as exc:
        raise EngineUnavailable(
            f"cannot reach the Dask scheduler {address or '(LocalCluster)'}: {first_line(exc)}",
            "check the address (--scheduler, DASK_SCHEDULER_ADDRESS) and that it runs; "
            "nothing was committed",
        ) from None
    run_tag = uuid.uuid4().hex[:8]
    try:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        limit = max(4, 2 * max(threads, 1))
        todo = iter(fragments)
        running: dict[Any, Any] = {}
        finished: list[Any] = []  # held so the scheduler remembers the tasks' retries

        def submit_next() -> None:
            fragment = next(todo, None)
            if fragment is not None:
                future = client.submit(
                    score_on_worker,
                    fragment,
                    job,
                    ref,
                    key=f"batch-infer-{run_tag}-{fragment.name}",
                    pure=False,
                )
                running[future] = fragment

        for _ in range(limit):
            submit_next()
        try:
            while running:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                done = [future for future in running if future.done()]
                if not done:
                    time.sleep(0.02)  # polled, so that a cancel is seen within a moment
                    continue
                for future in done:
                    fragment = running.pop(future)
                    try:
                        staged, worker = future.result()
                    except KilledWorker as exc:
                        raise EngineUnavailable(
                            f"Dask workers kept dying while scoring {fragment.describe()} "
                            f"({first_line(exc)})",
                            "check the workers' memory limits and logs; what was staged is kept "
                            "and the rerun resumes it",
                        ) from None
                    stats.workers.add(worker)
                    finished.append(future)
                    rejected = [f for f in staged.files if is_reject_file(f.path)]
                    if rejected:
                        budget.add_staged(sum(f.rows for f in rejected), job.target, rejected[0])
                    on_result(fragment, staged)
                    submit_next()
        except BaseException:
            client.cancel(list(running), force=True)
            raise
        stats.task_retries = _retries(client, run_tag)
        stats.worker_peak_rss_mib = _worker_peak_rss_mib(client)
        return stats
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _peak_rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _worker_peak_rss_mib(client: Any) -> float | None:
    try:
        peaks = client.run(_peak_rss_kib)
    except Exception:  # a report detail, never a reason to fail a scored run
        return None
    return round(max(peaks.values()) / 1024, 1) if peaks else None


def _retries(client: Any, run_tag: str) -> int:
    """Tasks of this run the scheduler saw lost with a dying worker (then rerun)."""

    def suspicious(dask_scheduler: Any = None, tag: str = run_tag) -> int:
        return sum(
            ts.suspicious
            for key, ts in dask_scheduler.tasks.items()
            if str(key).startswith(f"batch-infer-{tag}-")
        )

    try:
        return int(client.run_on_scheduler(suspicious))
    except Exception:  # an older scheduler: the count is a report detail, not a result
        return 0
