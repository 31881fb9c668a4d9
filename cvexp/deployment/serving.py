"""Running ``mlflow models serve`` from Python (tests, benchmarks): start, wait for ``/ping``, stop.

A deployment runs the same command from a shell (docs/deployment.md); this wrapper only makes sure
that a server started by a script binds to the loopback interface and is always stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running model server: its base URL and the process id of ``mlflow models serve`` (its workers are children)."""

    url: str
    pid: int


@contextmanager
def mlflow_model_server(model_uri: str, tracking_uri: str | None = None, startup_timeout: float = 180.0,
                        log_path: Path | None = None, python: str | Path = sys.executable) -> Iterator[Server]:  # fmt: skip
    """Serves ``model_uri`` with ``mlflow models serve --env-manager local`` on 127.0.0.1; yields the :class:`Server`.

    Waits (at most ``startup_timeout`` seconds) until ``/ping`` answers, and stops the server and
    its workers on exit. ``tracking_uri`` is the store that resolves a ``models:/`` URI; ``python``
    is the interpreter of the environment that serves (another virtual environment's, say).
    """
    port = free_port()
    # The server runs `uvicorn` by name: the interpreter's scripts folder first on PATH finds it
    # even when its virtual environment is not activated.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [str(python), "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    log_file = open(log_path, "wb") if log_path else subprocess.DEVNULL  # closed in the finally below
    # A session of its own: the server forks uvicorn workers, which are stopped with it.
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow models serve -m {model_uri} exited with status {process.returncode}"
                                   + (f"; its log: {log_path}" if log_path else ""))  # fmt: skip
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow models serve -m {model_uri} did not answer {url}/ping within {startup_timeout:.0f} s")
            time.sleep(0.5)
        yield Server(url, process.pid)
    finally:
        _stop(process)
        if log_path:
            log_file.close()


def _stop(process: subprocess.Popen) -> None:
    # The process group this module started (start_new_session): the server and its workers.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
