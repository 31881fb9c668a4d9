"""Distributed training with Ray Train: ``num_workers`` Lightning DDP workers on a Ray cluster.

The driver (the ``cvexp.train`` process) builds the LightningModule, the DataModule, the callbacks
and the logger exactly as for local training and hands them to :class:`RayEngine`. Each Ray Train
worker receives a pickled copy, builds its own ``lightning.Trainer`` with Ray's DDP strategy and
cluster environment, and fits. Only rank 0 logs (Lightning loggers are rank-zero-only) into the
MLflow run the driver opened, so a run stays one MLflow run whatever the number of workers.

After every epoch that validated, rank 0's Lightning checkpoint is reported to Ray Train, which
keeps the best ``checkpoints_to_keep`` by the optimised metric and restarts the worker group from
the latest one when a worker dies (up to ``max_failures`` times). The best checkpoint comes back to
the driver, where :meth:`RayEngine.test` evaluates it in-process.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L

from cvexp.engines.local import FitResult, LocalEngine
from cvexp.engines.ray_cluster import RayCluster
from cvexp.engines.ray_startup import FIRST_STEP_MARKER, StartupWatch, start_autoscaling_coordinator
from cvexp.engines.ray_worker import CHECKPOINT_FILE, train_worker

log = logging.getLogger(__name__)



class RayEngine:
    """Fits with Ray Train's ``TorchTrainer`` (Lightning DDP in every worker); tests on the driver.

    Args:
        callbacks: Lightning callbacks; every worker gets a copy (they must be picklable).
        logger: a Lightning logger, or ``False``; workers log into the driver's run (rank 0 only).
        num_workers: training processes (DDP ranks).
        use_gpu: one GPU per worker (``gpus_per_worker``); otherwise CPU workers with the gloo backend.
        cpus_per_worker, gpus_per_worker: Ray resources each worker reserves.
        cluster: where the run happens (the ``ray`` config group, :mod:`cvexp.engines.ray_cluster`):
            a fresh local cluster (``None``, the default), an existing one, or Ray started on Spark.
            Ray already initialised in this process (a job of ``hydra/launcher=ray_jobs``) is used as is.
        storage_path: where Ray Train writes its checkpoints; shared storage (NFS, ``s3://``,
            ``/dbfs/...``) on a multi-node cluster.
        name: the Ray Train run's folder under ``storage_path``; ``None``: a new unique name. Reusing
            the name of an unfinished run resumes it from its latest checkpoint.
        checkpoints_to_keep: Ray checkpoints kept, the best by ``checkpoint_score_attribute``.
        checkpoint_score_attribute, checkpoint_score_order: the metric checkpoints are ranked by,
            and whether higher (``max``) or lower (``min``) is better.
        max_failures: times a failed worker group is restarted from the latest checkpoint.
        run_callbacks: Ray Train callbacks (``ray.train.UserCallback``) of the run, in the driver;
            a Ray Tune sweep adds one that passes the workers' reports on to Tune
            (:class:`cvexp.tuning.TrainReportToTune`).
        seed: each worker seeds its generators with it before fitting (``${seed}``), as the driver
            does for local training: augmentation, dropout and the models' random queries then repeat
            from run to run; ``None`` leaves the workers unseeded.
        find_unused_parameters: let DDP find parameters that get no gradient in a step. Needed when
            a model has such parameters (Hugging Face's two-stage Deformable DETR computes no loss
            for its encoder proposal head); ``False`` saves a graph walk per step otherwise.
        precision: a Lightning precision, or ``auto`` (resolved in each worker, see
            :func:`~cvexp.engines.local.resolve_precision`).
        accelerator, devices, strategy: must stay ``auto``: each worker drives one device, CPU or
            (with ``use_gpu``) GPU, with Ray's DDP strategy; scale with ``num_workers``.
        **trainer_options: any other ``lightning.Trainer`` argument (max_epochs, gradient_clip_val, ...).
    """

    def __init__(
        self,
        callbacks: list[L.Callback] | None = None,
        logger: Any = False,
        num_workers: int = 2,
        use_gpu: bool = False,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 1,
        cluster: RayCluster | None = None,
        storage_path: str | None = None,
        name: str | None = None,
        checkpoints_to_keep: int | None = 2,
        checkpoint_score_attribute: str | None = "val/map",
        checkpoint_score_order: str = "max",
        max_failures: int = 1,
        run_callbacks: list[Any] | None = None,
        seed: int | None = None,
        find_unused_parameters: bool = True,
        precision: str = "auto",
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        **trainer_options: Any,
    ) -> None:
        if strategy != "auto":
            raise ValueError(f"trainer.strategy={strategy!r}: with trainer=ray the strategy is Ray's DDP; leave it at auto "
                             "(and set trainer.find_unused_parameters for models with unused parameters).")  # fmt: skip
        if accelerator != "auto" or devices not in ("auto", 1):
            raise ValueError(
                f"trainer.accelerator={accelerator!r} trainer.devices={devices!r}: with trainer=ray each worker drives one "
                "device; leave both at auto and set trainer.num_workers (and trainer.use_gpu=true for GPUs)."
            )
        if num_workers < 1:
            raise ValueError(f"trainer.num_workers={num_workers}: at least 1 worker is needed.")
        self.callbacks = list(callbacks or [])
        self.logger = logger
        self.num_workers = int(num_workers)
        self.use_gpu = bool(use_gpu)
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.cluster = cluster or RayCluster()
        self.storage_path = storage_path
        self.name = name
        self.checkpoints_to_keep = checkpoints_to_keep
        self.checkpoint_score_attribute = checkpoint_score_attribute
        self.checkpoint_score_order = checkpoint_score_order
        self.max_failures = max_failures
        self.run_callbacks = list(run_callbacks or [])
        self.seed = seed
        self.find_unused_parameters = find_unused_parameters
        self.precision = precision
        self.trainer_options = trainer_options

    def fit(self, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None = None) -> FitResult:
        """Trains on the Ray cluster; ``ckpt_path`` resumes from a Lightning checkpoint as locally."""
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        cluster_started = time.time()
        with self.cluster:
            start_autoscaling_coordinator()
            resources = {"CPU": self.cpus_per_worker} | ({"GPU": self.gpus_per_worker} if self.use_gpu else {})
            name = self.name or f"cvexp-{time.strftime('%Y-%m-%d_%H-%M-%S')}-{uuid.uuid4().hex[:6]}"
            storage = self.storage_path or str(Path("~/ray_results").expanduser())
            # The first training step marks it here, for the start-up watch (local storage only: remote storage is not polled).
            marker = None if "://" in storage else Path(storage) / name / FIRST_STEP_MARKER
            # The model, data, callbacks and logger go to the workers through the object store: Ray Train's
            # controller passes the reference on without unpickling them, so it never imports torch,
            # Lightning or transformers (on a loaded 2-core machine that import took it minutes).
            payload = ray.put({
                "module": module,
                "datamodule": datamodule,
                "callbacks": self.callbacks,
                "logger": self._logger_for_workers(),
                "trainer_options": {"precision": self.precision, **self.trainer_options},
                "use_gpu": self.use_gpu,
                "cpus_per_worker": self.cpus_per_worker,
                "find_unused_parameters": self.find_unused_parameters,
                "seed": self.seed,
                "ckpt_path": ckpt_path,
                "first_step_marker": str(marker) if marker else None,
            })  # fmt: skip
            trainer = TorchTrainer(
                train_worker,  # by reference: cvexp.engines.ray_worker imports nothing heavy at the top
                train_loop_config={"payload": payload},
                scaling_config=ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu, resources_per_worker=resources),
                run_config=RunConfig(
                    name=name,
                    storage_path=self.storage_path,
                    checkpoint_config=CheckpointConfig(
                        num_to_keep=self.checkpoints_to_keep,
                        checkpoint_score_attribute=self.checkpoint_score_attribute,
                        checkpoint_score_order=self.checkpoint_score_order,
                    ),
                    failure_config=FailureConfig(max_failures=self.max_failures),
                    callbacks=self.run_callbacks,
                ),
            )
            with StartupWatch(marker, f"{self.num_workers} workers x {resources}", cluster_started) as watch:
                result = trainer.fit()  # raises ray.train.TrainingFailedError once max_failures are spent
            startup_seconds = watch.first_step_seconds()
            if startup_seconds is not None:
                log.info("Ray Train: the first training step began %.1f s after the cluster %s", startup_seconds,
                         "started" if self.cluster.started_here else "was joined")  # fmt: skip
            log.info("Ray Train run %s finished: %s", name, result.path)
            best = None
            if self.checkpoint_score_attribute:
                best = result.get_best_checkpoint(self.checkpoint_score_attribute, self.checkpoint_score_order)
            best = best or result.checkpoint
            best_metrics = next((metrics for checkpoint, metrics in result.best_checkpoints or [] if checkpoint == best), {})
            best_score = best_metrics.get(self.checkpoint_score_attribute) if self.checkpoint_score_attribute else None
            return FitResult(
                best_model_path=_local_checkpoint_file(best) if best is not None else None,
                best_score=float(best_score) if best_score is not None else None,
                monitor=self.checkpoint_score_attribute,
                metrics={key: float(value) for key, value in (result.metrics or {}).items() if isinstance(value, int | float)},
                trainer=None,
                startup_seconds=startup_seconds,
            )

    def test(
        self, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None = None
    ) -> dict[str, float]:
        """Tests on the driver, in this process (one device), with the driver's logger and callbacks.

        The driver's module was not trained (the workers were): without a checkpoint there is
        nothing to test, and the result is empty.
        """
        if not ckpt_path:
            log.warning("No checkpoint came back from the Ray workers (did validation run? see limit_val_batches and "
                        "check_val_every_n_epoch): the test split is not evaluated.")  # fmt: skip
            return {}
        local = LocalEngine(
            callbacks=self.callbacks, logger=self.logger, precision=self.precision, devices=1, **self.trainer_options
        )
        return local.test(module, datamodule, ckpt_path=ckpt_path)

    def _logger_for_workers(self) -> Any:
        # Open the run on the driver first, so that every worker (and every restart) logs into it.
        if self.logger and hasattr(self.logger, "run_id"):
            _ = self.logger.run_id
        return self.logger


def _local_checkpoint_file(checkpoint: Any) -> str:
    """The Lightning ``.ckpt`` inside a Ray checkpoint, downloaded first when the storage is remote."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return str(Path(checkpoint.path) / CHECKPOINT_FILE)
    directory = checkpoint.to_directory(tempfile.mkdtemp(prefix="cvexp-ray-checkpoint-"))
    return str(Path(directory) / CHECKPOINT_FILE)
