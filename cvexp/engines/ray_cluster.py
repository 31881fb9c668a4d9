"""Where a job's Ray work runs: the ``ray`` config group (conf/ray/), shared by ``trainer=ray`` and ``cvexp.predict engine=ray``.

- :class:`RayCluster` (``ray=local``, the default): a fresh local cluster, stopped when the job ends;
  ``ray.address=auto`` joins the cluster this machine belongs to (``ray start``), ``ray://HEAD:10001``
  a remote one through Ray Client;
- :class:`RayOnSpark` (``ray=spark``, chosen by ``trainer=ray_on_spark``): starts Ray on the Spark
  cluster the job runs on (a Databricks cluster, or any Spark standalone/YARN/Kubernetes one) with
  ``ray.util.spark.setup_ray_cluster``, and shuts it down after.

Either is a context manager; inside it Ray is initialised in this process. When Ray already is (a job of
``hydra/launcher=ray_jobs``, a Ray Tune trial), entering joins that and leaving stops nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from cvexp.errors import ConfigError

log = logging.getLogger(__name__)


class RayCluster:
    """A fresh local Ray cluster, or an existing one to join.

    Args:
        address: ``None`` starts a fresh local cluster (stopped again when the job ends); ``auto``
            joins the cluster this machine belongs to; ``ray://host:10001`` a remote one.
        init: further ``ray.init`` arguments (e.g. ``num_cpus`` for a fresh cluster, ``runtime_env``).
    """

    def __init__(self, address: str | None = None, init: dict[str, Any] | None = None) -> None:
        self.address = address
        self.init = dict(init or {})
        self.started_here = False

    def __enter__(self) -> RayCluster:
        import ray

        if ray.is_initialized():
            self.started_here = False
            return self
        self.started_here = True
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.started_here:
            self.disconnect()
            self.started_here = False

    def connect(self) -> None:
        """Initialises Ray in this process on the cluster this object describes."""
        import ray

        # A bare ray.init() would join whatever local cluster an earlier process left running. The
        # dashboard starts as Ray chooses: without it, Ray Train's placement-group cleaner cannot ask
        # the State API whether the run is alive and warns about it every second.
        ray.init(address=self.address or "local", **self.init)

    def disconnect(self) -> None:
        """Leaves the cluster (a fresh local one stops with it)."""
        import ray

        ray.shutdown()

    def describe(self) -> str:
        """The cluster in a few words, for log lines."""
        return "a fresh local Ray cluster" if not self.address else f"the Ray cluster at {self.address}"


class RayOnSpark(RayCluster):
    """Ray started on the Spark cluster this process drives (``ray.util.spark.setup_ray_cluster``), shut down after.

    The Ray head runs in this (the Spark driver's) process tree; each Ray worker node is a long-running
    Spark task on an executor, so Ray gets the executors' cores and GPUs. On Databricks, the notebook's
    or job's SparkSession is used; elsewhere one is created (``spark_master``, ``spark_conf``) and
    stopped again at the end.

    Args:
        max_worker_nodes: Ray worker nodes (Spark tasks) to start.
        num_cpus_worker_node, num_gpus_worker_node: resources of each Ray worker node (``None``: a
            Spark executor's cores / GPUs).
        num_cpus_head_node: CPUs the head (on the driver) offers to tasks; ``0`` keeps work off the driver.
        spark_master: the master of a SparkSession created here (``spark://host:7077``, ``local[2]``);
            ``None``: the active session's, or Spark's default.
        spark_conf: further Spark settings of a session created here; nested keys join with dots, so
            ``ray.spark_conf.spark.executor.cores=2`` on the command line is ``spark.executor.cores``.
        setup: further ``setup_ray_cluster`` arguments (``memory_worker_node``, ``ray_temp_root_dir``, ...).
        init: further ``ray.init`` arguments.
    """

    def __init__(
        self,
        max_worker_nodes: int = 1,
        num_cpus_worker_node: int | None = None,
        num_gpus_worker_node: int | None = None,
        num_cpus_head_node: int | None = 0,
        spark_master: str | None = None,
        spark_conf: dict[str, Any] | None = None,
        setup: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(address=None, init=init)
        if num_gpus_worker_node is not None and num_cpus_worker_node is None:
            raise ConfigError("ray.num_gpus_worker_node is set but ray.num_cpus_worker_node is not: Ray on Spark takes both "
                             "or neither; set ray.num_cpus_worker_node too.")  # fmt: skip
        self.max_worker_nodes = int(max_worker_nodes)
        self.num_cpus_worker_node = num_cpus_worker_node
        self.num_gpus_worker_node = num_gpus_worker_node
        self.num_cpus_head_node = num_cpus_head_node
        self.spark_master = spark_master
        self.spark_conf = dict(spark_conf or {})
        self.setup = dict(setup or {})
        self._spark: Any = None
        self._spark_created_here = False

    def connect(self) -> None:
        import ray
        from ray.util.spark import setup_ray_cluster

        self._spark, self._spark_created_here = self._spark_session()
        options: dict[str, Any] = {"num_cpus_head_node": self.num_cpus_head_node}
        if self.num_cpus_worker_node is not None:  # setup_ray_cluster takes the worker's CPUs and GPUs together
            options |= {"num_cpus_worker_node": self.num_cpus_worker_node, "num_gpus_worker_node": self.num_gpus_worker_node or 0}
        address, _ = setup_ray_cluster(
            max_worker_nodes=self.max_worker_nodes, **{k: v for k, v in options.items() if v is not None}, **self.setup
        )
        log.info("Ray on Spark: %d worker node(s) started on %s; the cluster is at %s", self.max_worker_nodes,
                 self._spark.sparkContext.master, address)  # fmt: skip
        self.address = address
        # The job's actors get the address too: Ray Train's placement-group cleaner otherwise looks for
        # "the" local cluster and fails when another Ray cluster runs on the same machine.
        runtime_env = dict(self.init.get("runtime_env") or {})
        runtime_env["env_vars"] = {"RAY_ADDRESS": address, **(runtime_env.get("env_vars") or {})}
        ray.init(address=address, **{**self.init, "runtime_env": runtime_env})

    def disconnect(self) -> None:
        import ray
        from ray.util.spark import shutdown_ray_cluster

        try:
            ray.shutdown()
            shutdown_ray_cluster()
        finally:
            os.environ.pop("RAY_ADDRESS", None)  # set by setup_ray_cluster; a later fresh cluster must not join a dead one
            if self._spark_created_here:
                _stop_spark(self._spark)
            self._spark, self._spark_created_here = None, False

    def describe(self) -> str:
        return f"Ray on the Spark cluster ({self.max_worker_nodes} worker node(s))"

    def _spark_session(self) -> tuple[Any, bool]:
        """The active SparkSession (Databricks), or a new one; and whether it was created here."""
        try:
            from pyspark.sql import SparkSession
        except ImportError as error:
            raise ConfigError("ray=spark (trainer=ray_on_spark) needs pyspark: pip install 'cvexp[spark]' "
                              "(on Databricks it is installed).") from error  # fmt: skip
        active = SparkSession.getActiveSession()
        if active is not None:
            return active, False
        builder = SparkSession.builder.appName("cvexp")
        if self.spark_master:
            builder = builder.master(self.spark_master)
        for key, value in _dotted(self.spark_conf).items():
            builder = builder.config(key, str(value))
        return builder.getOrCreate(), True


def _stop_spark(spark: Any) -> None:
    """Stops a SparkSession created here, and the JVM behind it (``spark.stop()`` leaves that running until Python exits)."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is not None:  # the JVM exits when its stdin closes
        process.stdin.close()
        process.wait(timeout=30)
    SparkContext._gateway = None
    SparkContext._jvm = None


def _dotted(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as Spark's dotted keys: ``{"spark": {"task": {"cpus": 1}}}`` -> ``{"spark.task.cpus": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
