"""A Spark standalone cluster on 127.0.0.1 for tests: a master and one worker, started from the pyspark package.

:func:`spark_standalone` starts both with pyspark's ``spark-class`` (Java from the system), waits until
the worker has registered, and yields what a job needs to use it; on exit it stops them and waits until
no process of theirs is left. Everything they write goes under a short scratch folder (Ray on Spark
puts Unix sockets under ``ray_temp_root_dir``, whose path must stay under ~25 characters).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SparkStandalone:
    """A running local Spark standalone cluster."""

    master_url: str
    scratch: Path

    def overrides(self) -> list[str]:
        """The ``ray=spark`` settings that point a cvexp job at this cluster (its SparkSession, Ray's temp folder)."""
        conf = {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "1g",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.executor.cores": "2",
            "spark.cores.max": "2",
            "spark.executor.memory": "1g",
            "spark.task.cpus": "1",
            "spark.pyspark.python": sys.executable,  # the Ray worker node starts in the executor's Python
            "spark.executorEnv.PATH": os.environ["PATH"],
            "spark.executorEnv.RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"],
        }
        return [
            f"ray.spark_master={self.master_url}",
            *(f"+ray.spark_conf.{key}='{value}'" for key, value in conf.items()),
            f"+ray.setup.ray_temp_root_dir={self.scratch / 'r'}",
            "+ray.setup.memory_worker_node=2147483648",
            "+ray.setup.object_store_memory_worker_node=536870912",
        ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # A killed test run must not leave the JVMs behind (spark-class execs java, which keeps this setting).
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _java_home() -> str:
    java = shutil.which("java")
    if not java:
        raise RuntimeError("Spark needs Java: no java on PATH (apt install openjdk-17-jre-headless) and no JAVA_HOME.")
    return str(Path(java).resolve().parent.parent)


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
        return json.load(response)


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the Spark {what} exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Spark {what} was not up within {timeout_s:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def spark_standalone(monkeypatch) -> Iterator[SparkStandalone]:
    """Starts a master and a 2-core worker on 127.0.0.1; sets the environment Spark and Ray on Spark need in this process."""
    import pyspark

    scratch = Path(tempfile.mkdtemp(prefix="ros", dir="/tmp"))
    for folder in ("local", "work", "conf", "logs", "r"):
        (scratch / folder).mkdir()
    spark_home = Path(pyspark.__file__).parent
    environment = {
        "JAVA_HOME": os.environ.get("JAVA_HOME") or _java_home(),
        "SPARK_HOME": str(spark_home),
        "SPARK_CONF_DIR": str(scratch / "conf"),  # empty: no stray spark-defaults.conf
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_DIRS": str(scratch / "local"),
        "SPARK_WORKER_DIR": str(scratch / "work"),
        "SPARK_LOG_DIR": str(scratch / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        # Ray on Spark starts its nodes with the `ray` command found on PATH, in the driver and the executors
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # `ray start` turns token authentication on by itself when ~/.ray/auth_token exists (any earlier
        # local cluster writes one) while ray.init(address=...) does not: one mode for every process.
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spark_class = str(spark_home / "bin" / "spark-class")
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = scratch / "logs" / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([spark_class, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        processes.append(process)
        return process, log

    try:
        port, master_ui, worker_ui = _free_port(), _free_port(), _free_port()
        master, log = start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                            "--webui-port", str(master_ui))  # fmt: skip
        _wait_for(lambda: _master_state(master_ui).get("status") == "ALIVE", "master", master, log)
        master_url = f"spark://127.0.0.1:{port}"
        worker, log = start("worker", "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1", "--cores", "2",
                            "--memory", "4g", "--webui-port", str(worker_ui), "--work-dir", str(scratch / "work"))  # fmt: skip
        alive = lambda: any(w.get("state") == "ALIVE" for w in _master_state(master_ui).get("workers", []))  # noqa: E731
        _wait_for(alive, "worker", worker, log)
        yield SparkStandalone(master_url, scratch)
    finally:
        for process in reversed(processes):  # the worker first: its shutdown hook stops its executors
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
