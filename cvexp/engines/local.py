"""Local training: one Lightning ``Trainer`` in this process (CPU, one GPU or several)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from cvexp.engines.resume import AtomicCheckpointIO


@dataclass
class FitResult:
    """What a training run produced."""

    best_model_path: str | None
    best_score: float | None
    monitor: str | None
    metrics: dict[str, float]  # the last logged value of every metric
    trainer: L.Trainer | None  # None when the training ran in other processes (RayEngine)
    startup_seconds: float | None = None  # from the engine's start (a Ray cluster) to the first training step


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, fp16 mixed on other GPUs, fp32 on CPU.

    CPU bf16 autocast runs slower than fp32 on most CPUs, so ``auto`` keeps fp32 there.
    """
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class LocalEngine:
    """Fits and tests with a ``lightning.Trainer`` built from the ``trainer`` config.

    Args:
        callbacks: Lightning callbacks.
        logger: a Lightning logger, or ``False``.
        precision: a Lightning precision, or ``auto`` (see :func:`resolve_precision`).
        **trainer_options: any other ``lightning.Trainer`` argument (max_epochs,
            gradient_clip_val, accelerator, devices, ...).
    """

    def __init__(self, callbacks: list[L.Callback] | None = None, logger: Any = False, precision: str = "auto", **trainer_options: Any) -> None:
        # Checkpoints are written all-or-nothing: a kill during a write keeps the previous last.ckpt.
        plugins = [*trainer_options.pop("plugins", []), AtomicCheckpointIO()]
        self.trainer = L.Trainer(callbacks=callbacks or [], logger=logger, precision=resolve_precision(precision), plugins=plugins,
                                 **trainer_options)  # fmt: skip

    def fit(self, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None = None) -> FitResult:
        self.trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        checkpoint = self.trainer.checkpoint_callback
        best_score = getattr(checkpoint, "best_model_score", None)
        return FitResult(
            best_model_path=getattr(checkpoint, "best_model_path", None) or None,
            best_score=float(best_score) if best_score is not None else None,
            monitor=getattr(checkpoint, "monitor", None),
            metrics={name: float(value) for name, value in self.trainer.callback_metrics.items()},
            trainer=self.trainer,
        )

    def test(self, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None = None) -> dict[str, float]:
        results = self.trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        return {name: float(value) for name, value in results[0].items()} if results else {}
