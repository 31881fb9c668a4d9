"""The order in which a split's images are read: by epoch, by rank, and resumable mid-epoch.

:class:`EpochSampler` replaces both PyTorch's ``RandomSampler`` and the ``DistributedSampler``
Lightning would put in its place (the trainers set ``use_distributed_sampler: false``):

- the order of an epoch is a function of ``(seed, epoch)`` alone, so a run resumed from a
  checkpoint taken mid-epoch reads the rest of that epoch in the order the first run would have
  (:meth:`EpochSampler.resume` skips what it already trained on);
- under DDP each rank reads its own share (every ``world_size``-th image of the order), padded by
  repeating images so that every rank has as many batches, as ``DistributedSampler`` does; the COCO
  metric counts a repeated image once (:class:`cvexp.evaluation.coco_metric.CocoDetectionMetric`);
- :meth:`EpochSampler.set_epoch` also tells the dataset the epoch (through a tensor in shared
  memory, which DataLoader worker processes see), so that each sample's augmentation is drawn from
  ``(seed, epoch, image)`` alone: different on every rank, worker and epoch, the same after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

# The "index" the epoch's order is seeded with: one no image has.
_ORDER = 2**32 - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, from the run's seed, the epoch and the sample's index."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Indices of one rank's share of a split, in an order fixed by ``(seed, epoch)``.

    Args:
        size: the split's number of images.
        seed: the run's seed (every rank the same: the shares come from one order).
        shuffle: a new permutation every epoch (training); ``False`` keeps the split's order.
        rank, world_size: this process's share; ``world_size=1`` reads everything.
        epoch_tensor: a one-element shared tensor that :meth:`set_epoch` fills (the dataset's).
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 epoch_tensor: torch.Tensor | None = None) -> None:  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.epoch_tensor = epoch_tensor
        self._skip = 0

    def __len__(self) -> int:
        return -(-self.size // self.world_size)  # ceil: every rank as many as the largest share

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = int(epoch)
        if self.epoch_tensor is not None:
            self.epoch_tensor.fill_(self.epoch)

    def resume(self, epoch: int, consumed: int) -> None:
        """The next pass is epoch ``epoch`` without its first ``consumed`` indices (trained on before a checkpoint)."""
        self.set_epoch(epoch)
        self._skip = int(consumed)

    def indices(self) -> list[int]:
        """This rank's share of the epoch's order, padded to :meth:`__len__` by repeating from its start."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, _ORDER))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.world_size
        order += (order * (total // max(len(order), 1) + 1))[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        yield from self.indices()[skip:]
