"""Lightning callbacks that tests put into real training processes (``+callbacks.<name>._target_=tests.drills...``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """``kill -9`` of this very process after training step ``step`` (before that step's checkpoint, if any, is written).

    Lightning runs checkpoint callbacks after the others, so a checkpoint due at ``step`` is not written.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
