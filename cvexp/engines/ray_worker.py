"""What runs in each Ray Train worker (``trainer=ray``): a Lightning trainer with Ray's DDP strategy.

Kept apart from :mod:`cvexp.engines.ray`, and with every heavy import inside the functions: Ray
Train's controller imports this module to unpickle :func:`train_worker` by reference, and should not
pay for torch, Lightning and transformers, which only the workers need.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

# The file name RayTrainReportCallback gives the Lightning checkpoint inside a Ray checkpoint.
CHECKPOINT_FILE = "checkpoint.ckpt"


def _report_after_validation() -> Any:
    """A ``RayTrainReportCallback`` that reports (metrics + checkpoint) only after epochs that validated.

    Ray ranks checkpoints by ``checkpoint_score_attribute``; a checkpoint from an epoch without
    validation would carry a missing or stale score. Built inside the worker: the base class reads
    the Ray Train context when constructed.

    It is also a Lightning ``Checkpoint`` callback, which Lightning runs after the other callbacks,
    after the configured ``ModelCheckpoint`` has saved: the state in Ray's checkpoint then knows the
    files ``ModelCheckpoint`` wrote, and a restarted worker goes on updating them (``last.ckpt``, not
    a new ``last-v1.ckpt``).
    """
    import lightning as L
    from lightning.pytorch.callbacks import Checkpoint
    from ray.train.lightning import RayTrainReportCallback

    class ReportAfterValidation(RayTrainReportCallback, Checkpoint):
        def __init__(self) -> None:
            super().__init__()
            self.validated_epoch = -1

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                self.validated_epoch = trainer.current_epoch

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if self.validated_epoch == trainer.current_epoch:
                super().on_train_epoch_end(trainer, pl_module)

    return ReportAfterValidation()


def _first_step_marker(path: str | None) -> list[Any]:
    """A callback that writes the time of rank 0's first training step to ``path`` (the start-up watch's signal)."""
    if not path:
        return []
    import time

    import lightning as L

    class MarkFirstStep(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            marker = Path(path)
            if trainer.global_rank == 0 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(repr(time.time()))

    return [MarkFirstStep()]


def train_worker(train_loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: a Lightning trainer with Ray's DDP strategy, resumed from Ray's latest checkpoint.

    ``train_loop_config["payload"]``: an object-store reference to the driver's module, data,
    callbacks, logger and trainer options (:meth:`cvexp.engines.ray.RayEngine.fit`).
    """
    import lightning as L
    import ray
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from cvexp.engines.local import resolve_precision
    from cvexp.engines.resume import AtomicCheckpointIO
    from cvexp.models.huggingface import register_unpickled_models

    config = ray.get(train_loop_config["payload"])
    register_unpickled_models(config["module"])

    # Each worker computes with the CPUs it reserved: workers sharing a machine would otherwise each
    # start a thread per core and oversubscribe it.
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    if config["seed"] is not None:
        # Every rank the same seed, as Lightning seeds DDP processes; the samplers still give each
        # rank its own share of the data, and workers=True derives distinct DataLoader worker seeds.
        L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    # The COCO metrics are already gathered from every rank before they are logged (VisionTaskModule),
    # so Lightning's advice to sync them once more is noise, repeated per metric and per worker.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    options = dict(config["trainer_options"])
    options["precision"] = resolve_precision(options["precision"])
    trainer = L.Trainer(
        accelerator="gpu" if config["use_gpu"] else "cpu",
        devices="auto",
        strategy=RayDDPStrategy(find_unused_parameters=config["find_unused_parameters"]),
        plugins=[RayLightningEnvironment(), AtomicCheckpointIO()],
        callbacks=[*config["callbacks"], _report_after_validation(), *_first_step_marker(config.get("first_step_marker"))],
        logger=config["logger"],
        **options,
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the workers after a failure
    if checkpoint is None:
        trainer.fit(config["module"], datamodule=config["datamodule"], ckpt_path=config["ckpt_path"])
        return
    with checkpoint.as_directory() as directory:
        trainer.fit(config["module"], datamodule=config["datamodule"], ckpt_path=str(Path(directory) / CHECKPOINT_FILE))
