"""A callback that records per-epoch metrics and plots them when training ends."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L

from cvexp.evaluation.report import plot_training_curves

DEFAULT_CURVES = ("train/loss_epoch", "val/loss", "val/map", "val/map_50")


class TrainingCurves(L.Callback):
    """Writes ``training_curves.png`` to ``output_dir`` (and the MLflow run) at the end of fitting.

    Args:
        output_dir: where the PNG goes.
        metrics: logged metric names to plot; losses go left, scores right.
    """

    def __init__(self, output_dir: str, metrics: tuple[str, ...] | list[str] = DEFAULT_CURVES) -> None:
        self.output_dir = Path(output_dir)
        self.metrics = tuple(metrics)
        self.history: dict[str, dict[int, float]] = defaultdict(dict)
        self.path: Path | None = None

    def _record(self, trainer: L.Trainer, epoch: int, stage: str) -> None:
        for name in self.metrics:
            if name.startswith(stage) and name in trainer.callback_metrics:
                self.history[name][epoch] = float(trainer.callback_metrics[name])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, trainer.current_epoch, "val/")

    # Lightning aggregates epoch-level training metrics after the epoch-end hooks have run, so
    # they are read when the next epoch starts, and once more when fitting ends.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1, "train/")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1, "train/")
        if not trainer.is_global_zero or not self.history:
            return
        history = {name: sorted(points.items()) for name, points in self.history.items()}
        self.path = plot_training_curves(history, self.output_dir / "training_curves.png")
        for logger in trainer.loggers:
            if hasattr(logger, "run_id") and hasattr(logger.experiment, "log_artifact"):
                logger.experiment.log_artifact(logger.run_id, str(self.path), artifact_path="plots")
