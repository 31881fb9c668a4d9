"""The Lightning DataModule of every task: train/val/test splits read by the data option's dataset class."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from cvexp.data.dataset import LabelledImageDataset
from cvexp.data.labels import LabelMap
from cvexp.data.sampling import EpochSampler, RepeatFactorSampling
from cvexp.data.validation import DEFAULT_MAX_IMAGE_PIXELS, ImageHeaderCache, InvalidPolicy, SplitReport, check_same_categories
from cvexp.errors import DatasetError


class VisionDataModule(L.LightningDataModule):
    """Train/val/test splits of any format, augmentation on train only.

    The label map (contiguous training ids <-> the dataset's category ids and names) comes from
    the training split, so the model's class count is derived from the data, never configured.

    Args:
        dataset: the reader, a dataset class (or a partial of one, with its format's options)
            such as :class:`~cvexp.data.coco.CocoDetectionDataset`; each split's keyword
            arguments are passed to it with this DataModule's settings.
        train, val, test: each split's keyword arguments for ``dataset`` (its folders and files);
            ``val`` and ``test`` are optional.
        root: folder that relative paths of a split are read from (the values of its keys ending in
            ``_dir`` or ``_file``); ``None`` for absolute paths.
        augmentation: the :class:`~cvexp.data.augmentation.Augmentation` of the training split.
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the training process.
        image_size: longer image side fed to the model; ``None`` keeps the processor's setting.
        on_invalid: ``raise`` or ``skip`` bad records (see :mod:`cvexp.data.validation`).
        prepare: called once before the splits are read, e.g. to generate a synthetic dataset.
        pin_memory: DataLoader ``pin_memory`` (faster host-to-GPU copies).
        cache_images: keep decoded images in memory (see :class:`CocoDetectionDataset`).
        max_image_pixels: the largest image accepted (width x height): a guard against decompression bombs.
        header_cache: a JSON file that remembers checked image headers, so that a second run reads
            only the files that changed; ``None`` checks every file on every run.
        sampler: how often an epoch reads each training image: ``None`` once each (``sampler=none``), or
            :class:`~cvexp.data.sampling.RepeatFactorSampling` (``sampler=repeat_factor``: rare classes more often).
    """

    def __init__(
        self,
        dataset: Callable[..., LabelledImageDataset],
        train: dict,
        root: str | None = None,
        val: dict | None = None,
        test: dict | None = None,
        augmentation: Any | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: int | None = None,
        on_invalid: InvalidPolicy = "raise",
        prepare: Callable[[], None] | None = None,
        pin_memory: bool = False,
        cache_images: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        header_cache: str | None = None,
        sampler: RepeatFactorSampling | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.splits = {
            name: _as_split(spec, root) for name, spec in (("train", train), ("val", val), ("test", test)) if spec
        }
        self.augmentation = augmentation
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.on_invalid = on_invalid
        self.prepare = prepare
        self.pin_memory = pin_memory
        self.cache_images = cache_images
        self.max_image_pixels = max_image_pixels
        self.header_cache = header_cache
        self.sampler = sampler
        self._repeat_factors: np.ndarray | None = None
        self._header_cache: ImageHeaderCache | None = None
        self.seed: int | None = None  # augmentation and order seeds; drawn at setup from torch's seeded generator
        self._resume: dict[str, Any] = {}  # a checkpoint's place in its epoch (load_state_dict)
        self.collate_fn: Callable | None = None
        #: The training loader's collate function when it differs from the others' (multi-scale training).
        self.train_collate_fn: Callable | None = None
        self.datasets: dict[str, LabelledImageDataset] = {}

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def split_dataset(self, name: str, transform: Any | None = None) -> LabelledImageDataset:
        """One split's dataset, validated with this data config's settings (only that split is read)."""
        if name not in self.splits:
            raise DatasetError(f"data.{name} is not set: the data config has no '{name}' split; it has {sorted(self.splits)}.")
        if self._header_cache is None:  # one for every split: each saves what the others added
            self._header_cache = ImageHeaderCache(self.header_cache)
        return self.dataset(**self.splits[name], transform=transform, on_invalid=self.on_invalid, cache_images=self.cache_images,
                                    max_image_pixels=self.max_image_pixels, header_cache=self._header_cache, name=name)  # fmt: skip

    @property
    def validation_reports(self) -> dict[str, SplitReport]:
        """What validation kept, clipped and dropped, per split."""
        self.setup()
        return {name: dataset.report for name, dataset in self.datasets.items()}

    def setup(self, stage: str | None = None) -> None:
        missing = [name for name in self.splits if name not in self.datasets]
        if missing and self.seed is None:
            # albumentations draws from generators of its own that no global seed reaches: the
            # per-sample seeds and the epochs' orders come from this, drawn from torch's seeded
            # generator, so that `seed=` makes the run repeat (every rank draws the same).
            self.seed = int(torch.randint(0, 2**31 - 1, (1,)))
        for name in missing:
            transform = self.augmentation if name == "train" else None
            self.datasets[name] = self.split_dataset(name, transform)
            self.datasets[name].augmentation_seed = self.seed
        if missing:
            check_same_categories({name: dataset for name, dataset in self.datasets.items()})

    @property
    def label_map(self) -> LabelMap:
        self.setup()
        return self.datasets["train"].label_map

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.splits:
            raise DatasetError(f"data.{name} is not set: the data config has no '{name}' split.")
        if self.collate_fn is None:
            raise RuntimeError("VisionDataModule.collate_fn is unset: give it a BatchCollator before loading.")
        self.setup()
        dataset = self.datasets[name]
        dataset.epoch.share_memory_()  # the sampler sets it here, worker processes read it (idempotent)
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        repeat_factors = self.repeat_factors() if shuffle else None
        sampler = EpochSampler(len(dataset), self.seed or 0, shuffle=shuffle, rank=rank, world_size=world_size, epoch_tensor=dataset.epoch,
                               repeat_factors=repeat_factors)  # fmt: skip
        if shuffle and self._resume:
            self._resume_sampler(sampler)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=(self.train_collate_fn or self.collate_fn) if name == "train" else self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # numpy's and Python's generators in each worker, distinct per worker and rank (augmentation has its own seeds).
            worker_init_fn=partial(pl_worker_init_function, rank=rank),
            drop_last=False,
        )

    def repeat_factors(self) -> np.ndarray | None:
        """Each training image's mean reads per epoch under ``sampler`` (``None``: once each); the first call reports them."""
        if self.sampler is None:
            return None
        if self._repeat_factors is None:
            dataset = self.datasets["train"] if "train" in self.datasets else self.split_dataset("train")
            classes = dataset.image_classes()
            self._repeat_factors = self.sampler.image_factors(classes)
            names = {category.id: category.name for category in dataset.label_map.categories}
            repeated = {names.get(c, c): round(r, 2) for c, r in self.sampler.class_factors(classes).items() if r > 1}
            rank_zero_info(f"repeat-factor sampling (threshold {self.sampler.threshold}): an epoch reads {round(self._repeat_factors.sum())} "
                           f"images of {len(classes)}; classes read more often: {repeated or 'none (no class is that rare)'}")  # fmt: skip
        return self._repeat_factors

    def state_dict(self) -> dict[str, Any]:
        """Where the training stands in its epoch, saved in every checkpoint, so that a resumed run reads on from there."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {"epoch": int(trainer.current_epoch), "batches_done": done, "epoch_finished": done >= trainer.num_training_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` from a checkpoint; the next training loader continues that epoch."""
        self._resume = dict(state_dict)

    def _resume_sampler(self, sampler: EpochSampler) -> None:
        state, self._resume = self._resume, {}
        if not state.get("epoch_finished", True):  # a finished epoch: Lightning starts the next one, from its start
            sampler.resume(state["epoch"], state["batches_done"] * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _as_split(spec: dict, root: str | None) -> dict[str, Any]:
    """A split's keyword arguments with its relative paths (keys ending in ``_dir`` or ``_file``) under ``root``."""
    split = dict(spec)
    if root is None:
        return split
    return {key: str(Path(root) / value) if value and (key.endswith("_dir") or key.endswith("_file")) else value
            for key, value in split.items()}  # fmt: skip
