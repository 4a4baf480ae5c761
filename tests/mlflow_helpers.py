"""A real ``mlflow server`` on loopback for the registry tests: SQLite backend store, a local
artifact root served through the server (``mlflow-artifacts:``), started once per module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    root: Path
    log: Path

    def stop(self) -> None:
        """Stop the server and its workers (it runs in a process group of its own)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start_server(root: Path, app_name: str | None = None, timeout: float = 300) -> MlflowServer:
    """Start ``mlflow server`` and wait until ``/health`` answers (its startup is slow)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [
        mlflow,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
        # idle connections kept open: under load, a client reusing one the server just closed
        # would see "Remote end closed connection without response"
        "--uvicorn-opts",
        "--timeout-keep-alive 300",
    ]
    if app_name:
        command += ["--app-name", app_name]
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini")} if app_name else None
    if app_name:
        (root / "auth.ini").write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root / 'auth.db'}\n"
            "admin_username = admin\nadmin_password = password1234\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", process, root, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer /health: {log.read_text()[-2000:]}")
