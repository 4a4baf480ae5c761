"""The server processes: load and warm the model, serve REST and gRPC on one event loop, stop well.

One process (``--workers 1``) serves in the calling process. With ``--workers N`` a supervisor
starts N worker processes that share the ports (SO_REUSEPORT: the kernel spreads connections),
each with one copy of the model, and forwards SIGTERM to them.

On SIGTERM (or SIGINT): readiness turns false, both servers stop accepting, requests in flight
finish (at most ``shutdown_timeout_s``), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Generator
from typing import Any

from ..config import ServeConfig
from ..errors import BatchInferError, ConfigError
from ..logs import JsonFormatter
from ..redaction import RedactingFilter

log = logging.getLogger("batch_infer.serve")


def serve(config: ServeConfig, log_format: str = "text", access_log: bool = False) -> int:
    """Serve until stopped by SIGTERM or SIGINT; the exit code (0: stopped cleanly)."""
    if config.serve.workers > 1:
        return _supervise(config, log_format, access_log)
    configure_access_log(access_log, log_format)
    run_worker(config, reuse_port=False, access_log=access_log)
    return 0


def run_worker(config: ServeConfig, reuse_port: bool, access_log: bool = False) -> None:
    """One server process: load and warm the model, bind, serve until a signal."""
    import uvloop

    from .dataplane import DataPlane

    signal.signal(signal.SIGTERM, _stop_before_serving)
    dataplane = DataPlane.load(config)
    dataplane.warm()
    http_socket = bind(config.serve.host, config.serve.http_port, reuse_port)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(dataplane, http_socket, config, access_log, reuse_port))


def _stop_before_serving(signum: int, frame: Any) -> None:
    """SIGTERM while the model loads: nothing is in flight, so stop at once, cleanly."""
    raise SystemExit(0)


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The HTTP listening socket; shared between worker processes only when asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for HTTP: {exc.strerror or exc}",
            "choose another --http-port (or --host), or stop what uses it",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config: Any) -> Any:
    """uvicorn's server without its signal handling (ours stops REST and gRPC together)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server(config)


async def _serve(
    dataplane: Any,
    http_socket: socket.socket,
    config: ServeConfig,
    access_log: bool,
    reuse_port: bool,
) -> None:
    import uvicorn

    from .rest import create_app

    section = config.serve
    app = create_app(dataplane, access_log=access_log)
    server = _uvicorn_server(
        uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan="off",
            ws="none",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=section.shutdown_timeout_s,
        )
    )
    grpc_server = await _start_grpc(dataplane, section.host, section.grpc_port, reuse_port)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def stop(signum: int) -> None:
        if server.should_exit:  # a second signal: stop now
            server.force_exit = True
            return
        log.info(
            "%s: not ready any more; finishing requests in flight (at most %ss)",
            signal.Signals(signum).name,
            section.shutdown_timeout_s,
        )
        dataplane.stop_accepting()
        server.should_exit = True
        if grpc_server is not None:
            stopping.append(loop.create_task(_stop_grpc(grpc_server, section.shutdown_timeout_s)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    host, port = http_socket.getsockname()[:2]
    log.info(
        "serving model %r version %s: http://%s:%s (pid %s)",
        dataplane.name,
        dataplane.version,
        host,
        port,
        os.getpid(),
    )
    try:
        await server.serve(sockets=[http_socket])
        if grpc_server is not None and not stopping:  # uvicorn stopped on its own
            stopping.append(loop.create_task(_stop_grpc(grpc_server, section.shutdown_timeout_s)))
        await asyncio.gather(*stopping)
    finally:
        await dataplane.close()
    log.info("stopped")


async def _start_grpc(dataplane: Any, host: str, port: int | None, reuse_port: bool) -> Any:
    if port is None:
        return None
    try:
        from .grpc import start_grpc
    except ImportError as exc:  # grpcio is an optional extra
        raise ConfigError(
            f"gRPC is not available ({exc})",
            "pip install 'batch-infer[serve]', or set serve.grpc_port to null to serve REST only",
        ) from None
    server = await start_grpc(dataplane, host, port, reuse_port=reuse_port)
    log.info("serving model %r over gRPC: %s:%s", dataplane.name, host, port)
    return server


# ---------------------------------------------------------------- several worker processes


def _supervise(config: ServeConfig, log_format: str, access_log: bool) -> int:
    """Start the workers; forward SIGTERM/SIGINT; exit with the first failing worker's code."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    document = config.model_dump(mode="json")
    shared_metrics = _shared_metrics_folder()
    workers = [
        context.Process(
            target=_worker_main,
            args=(document, log_format, access_log, logging.getLogger().level),
            name=f"batch-infer-serve-{index}",
        )
        for index in range(config.serve.workers)
    ]
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM if signum == signal.SIGTERM else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        log.info("started %d worker processes", len(workers))
        code = 0
        while any(w.exitcode is None for w in workers):
            wait([w.sentinel for w in workers if w.exitcode is None], timeout=1.0)
            failed = [w for w in workers if w.exitcode not in (None, 0)]
            if failed and not stopping:  # one worker cannot serve: stop them all
                code = _exit_code(failed[0].exitcode)
                forward(signal.SIGTERM, None)
        failed = [w for w in workers if w.exitcode != 0]
        return code or (_exit_code(failed[0].exitcode) if failed else 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)


def _shared_metrics_folder() -> str | None:
    """A fresh folder for the workers' metric values (inherited through the environment), so
    ``/metrics`` sums all workers; None when the caller set PROMETHEUS_MULTIPROC_DIR already."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    import tempfile

    folder = tempfile.mkdtemp(prefix="batch-infer-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


def _exit_code(code: int | None) -> int:
    return 128 - code if code is not None and code < 0 else (code or 1)


def _worker_main(document: dict, log_format: str, access_log: bool, level: int) -> None:
    """A worker process: the same as one process, errors as one line and an exit code."""
    from .. import redaction
    from ..logs import setup

    setup(level, log_format)
    redaction.install()
    redaction.remember_config(document)
    configure_access_log(access_log, log_format)
    try:
        run_worker(ServeConfig.model_validate(document), reuse_port=True, access_log=access_log)
    except BatchInferError as exc:
        sys.stderr.write(redaction.redact_text(f"Error: {exc}") + "\n")
        sys.stderr.flush()
        os._exit(exc.exit_code)
    logging.shutdown()
    os._exit(0)


# ---------------------------------------------------------------- access logs


class AccessJsonFormatter(JsonFormatter):
    """The JSON log line, plus the request's fields (method, path, status, duration_ms)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = json.loads(super().format(record))
        entry.update(getattr(record, "access", None) or {})
        return json.dumps(entry, default=str)


def configure_access_log(enabled: bool, log_format: str) -> None:
    """Access lines on stderr when enabled: JSON objects with the request's fields, or text."""
    logger = logging.getLogger("batch_infer.serve.access")
    logger.handlers.clear()
    logger.propagate = False
    if not enabled:
        logger.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(AccessJsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


async def _stop_grpc(server: Any, grace: float) -> None:
    """Health says NOT_SERVING first (probes see it), then in-flight calls get ``grace`` to end."""
    from .grpc import stop_grpc

    await stop_grpc(server, grace)
