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
- with ``repeat_factors`` (:class:`RepeatFactorSampling`, ``sampler=repeat_factor``) an epoch reads
  image ``i`` ``floor(r_i)`` or ``ceil(r_i)`` times (``r_i`` on average), so that images of rare
  classes are seen more often. The k-th copy of an image in an epoch is index ``i + k * size``, which
  the dataset reads as image ``i`` with an augmentation of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

# The "index" the epoch's order is seeded with: one no image has.
_ORDER = 2**32 - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, from the run's seed, the epoch and the sample's index."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class RepeatFactorSampling:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019): images of rare classes are read more often.

    A class in a fraction ``f_c`` of the training images gets ``r_c = max(1, sqrt(threshold / f_c))``; an image
    the largest ``r_c`` of its classes (1 without any). Classes in at least ``threshold`` of the images are
    not repeated. An epoch then holds ``round(sum r_i)`` images (fixed, so that every epoch has as many steps).

    Args:
        threshold: the image fraction below which a class counts as rare (LVIS: 0.001 for 1 203 classes; a
            small dataset with a handful of classes wants about 0.1).
    """

    def __init__(self, threshold: float = 0.1) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"data.sampler.threshold={threshold}: give a fraction of the images, above 0 and at most 1.")
        self.threshold = threshold

    def class_factors(self, image_classes: Sequence[Iterable[int]]) -> dict[int, float]:
        """``r_c`` of every class present in ``image_classes`` (each image's class ids)."""
        counts: dict[int, int] = {}
        for classes in image_classes:
            for category in set(classes):
                counts[category] = counts.get(category, 0) + 1
        total = max(len(image_classes), 1)
        return {category: max(1.0, math.sqrt(self.threshold / (count / total))) for category, count in sorted(counts.items())}

    def image_factors(self, image_classes: Sequence[Iterable[int]]) -> np.ndarray:
        """``r_i`` of each image: the largest factor of its classes."""
        factors = self.class_factors(image_classes)
        return np.array([max((factors[c] for c in set(classes)), default=1.0) for classes in image_classes], dtype=np.float64)


class EpochSampler(Sampler[int]):
    """Indices of one rank's share of a split, in an order fixed by ``(seed, epoch)``.

    Args:
        size: the split's number of images.
        seed: the run's seed (every rank the same: the shares come from one order).
        shuffle: a new permutation every epoch (training); ``False`` keeps the split's order.
        rank, world_size: this process's share; ``world_size=1`` reads everything.
        epoch_tensor: a one-element shared tensor that :meth:`set_epoch` fills (the dataset's).
        repeat_factors: each image's mean number of reads per epoch (:class:`RepeatFactorSampling`); the
            epoch then holds ``round(sum)`` of them, drawn by stochastic rounding. Needs ``shuffle``.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 epoch_tensor: torch.Tensor | None = None, repeat_factors: np.ndarray | None = None) -> None:  # fmt: skip
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
        if repeat_factors is not None and (len(repeat_factors) != size or not shuffle or (np.asarray(repeat_factors) < 1).any()):
            raise ValueError(f"repeat_factors: one factor of at least 1 per image ({size}) of a shuffled split")
        self.repeat_factors = None if repeat_factors is None else np.asarray(repeat_factors, dtype=np.float64)
        #: Images per epoch (all ranks): the split's, or the repeat factors' sum.
        self.epoch_size = size if self.repeat_factors is None else int(round(float(self.repeat_factors.sum())))

    def __len__(self) -> int:
        return -(-self.epoch_size // self.world_size)  # ceil: every rank as many as the largest share

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
        if self.repeat_factors is not None:
            order = self._repeated_order()
        elif self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, _ORDER))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.world_size
        order += (order * (total // max(len(order), 1) + 1))[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def _repeated_order(self) -> list[int]:
        """The epoch's reads under repeat factors: image ``i`` ``floor(r_i)`` or ``ceil(r_i)`` times (stochastic rounding,
        from ``(seed, epoch)``), shuffled, the k-th copy as ``i + k * size``; cut or topped up to :attr:`epoch_size`."""
        generator = np.random.default_rng(sample_seed(self.seed, self.epoch, _ORDER))
        whole = np.floor(self.repeat_factors)
        counts = (whole + (generator.random(self.size) < self.repeat_factors - whole)).astype(np.int64)
        images = np.repeat(np.arange(self.size), counts)
        copy = np.arange(len(images)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... within each image's run
        reads = (images + copy * self.size)[generator.permutation(len(images))]
        # Short of epoch_size: repeat the order from its start, each round as copies not read yet (distinct augmentations).
        rounds = -(-self.epoch_size // max(len(reads), 1))
        offsets = np.repeat(np.arange(rounds) * (int(counts.max(initial=0)) * self.size), len(reads))
        return (np.tile(reads, rounds) + offsets)[: self.epoch_size].tolist()

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        yield from self.indices()[skip:]
