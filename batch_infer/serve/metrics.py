"""The server's Prometheus metrics, shared by REST and gRPC: both record into one ``ServeMetrics``.

Each data plane has its own registry, so tests and several data planes in one process never
collide. With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers:
their values go to files there, and ``/metrics`` answers with the sum over all workers,
whichever worker took the scrape (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class ServeMetrics:
    """Requests, errors and latency by protocol, endpoint and model; batches, queue, cache.

    ``observe(protocol, endpoint, model, seconds, status)`` is all a front door calls:
    ``protocol`` is "rest" or "grpc", ``endpoint`` the operation ("infer", "predict",
    "model_ready", ...), ``status`` None for success or the error's status (400, 404, 503 ...).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["protocol", "endpoint", "model"]
        self.requests = Counter(
            "batch_infer_serve_requests",
            "Requests answered, by protocol, endpoint and model.",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "batch_infer_serve_errors",
            "Requests answered with an error, by protocol, endpoint, model and status.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "batch_infer_serve_request_duration_seconds",
            "Time from a request's arrival to its answer, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "batch_infer_serve_batch_rows",
            "Rows per model call (a micro-batch of one or more requests).",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "batch_infer_serve_batch_requests",
            "Requests gathered into one model call.",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "batch_infer_serve_queue_depth",
            "Requests waiting for the model.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",  # with several workers: the sum over the live ones
        )
        self.cache_hits = Counter(
            "batch_infer_serve_cache_hits",
            "Rows answered from the result cache.",
            ["model"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "batch_infer_serve_cache_misses",
            "Rows the result cache did not hold (scored by the model).",
            ["model"],
            registry=self.registry,
        )
        self.rows = Counter(
            "batch_infer_serve_rows",
            "Rows scored by the model.",
            ["model"],
            registry=self.registry,
        )

    def observe(
        self, protocol: str, endpoint: str, model: str, seconds: float, status: int | None = None
    ) -> None:
        """Count one answered request and its latency; ``status`` set means it failed."""
        self.requests.labels(protocol, endpoint, model).inc()
        self.latency.labels(protocol, endpoint, model).observe(seconds)
        if status is not None:
            self.errors.labels(protocol, endpoint, model, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for a ``/metrics`` endpoint."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=shared)
        return generate_latest(registry), CONTENT_TYPE_LATEST
