"""An exponential moving average of the weights (EMA), as the DETR-family recipes (RT-DETR, D-FINE, RF-DETR) train with.

``callbacks=ema`` adds :class:`ExponentialMovingAverage`, Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`
with an EMA update whose decay warms up. Lightning does the rest: validation and the test run on the
averaged weights, a checkpoint's ``state_dict`` holds them (so the best checkpoint and the model
artifact written from it are the EMA model), and the raw weights and the average's state are in the
checkpoint too, so a resumed run continues both exactly.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import WeightAveraging

from cvexp.errors import ConfigError


class EmaUpdate:
    """The EMA step ``average <- d * average + (1 - d) * current``, in place over all tensors at once.

    The decay warms up as in the RT-DETR and YOLO recipes: ``d = decay * (1 - exp(-n / warmup_steps))`` at the
    ``n``-th update, so the first updates follow the fast-changing weights closely instead of keeping the
    random initialisation for thousands of steps. ``warmup_steps=0`` uses ``decay`` from the start.
    (A class, not a closure: Ray pickles the callbacks to its workers.)
    """

    def __init__(self, decay: float = 0.9999, warmup_steps: int = 2000) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay}: the decay must lie between 0 and 1 (e.g. 0.9999).")
        self.decay = decay
        self.warmup_steps = warmup_steps

    def decay_at(self, update: int) -> float:
        """The decay of the ``update``-th update (from 1)."""
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-update / self.warmup_steps))

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int) -> None:
        # AveragedModel copies the weights at its first update (num_averaged == 0) and calls this from the second on.
        decay = self.decay_at(int(num_averaged) + 1)
        with torch.no_grad():
            floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
            if floating:
                torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1.0 - decay)
            for a, c in zip(averaged, current, strict=True):  # integer buffers (batch norm's step counters): the latest
                if not a.is_floating_point():
                    a.copy_(c)


class ExponentialMovingAverage(WeightAveraging):
    """Keeps an EMA of the model's weights (and buffers) after every optimizer step; validates, tests and saves with it.

    Args:
        decay: the decay once warmed up (0.9999 in RT-DETR's and D-FINE's recipes; 0.993 in RF-DETR's).
        warmup_steps: the time constant of the decay's warm-up, in optimizer steps (0: none).
        use_buffers: average the buffers too (batch-norm statistics), as the recipes do.
    """

    def __init__(self, decay: float = 0.9999, warmup_steps: int = 2000, use_buffers: bool = True) -> None:
        super().__init__(use_buffers=use_buffers, multi_avg_fn=EmaUpdate(decay, warmup_steps))
