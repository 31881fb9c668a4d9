"""Lightning DataModule over COCO-format splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, get_worker_info

from cvexp.data.coco import CocoDetectionDataset, CocoSplit, DatasetError, InvalidPolicy, LabelMap


class CocoDetectionDataModule(L.LightningDataModule):
    """Train/val/test COCO splits, augmentation on train only.

    The label map (contiguous training ids <-> the dataset's category ids and names) comes from
    the training split, so the model's class count is derived from the data, never configured.

    Args:
        root: folder that relative split paths are read from; ``None`` for absolute paths.
        train, val, test: where each split lives; ``val`` and ``test`` are optional.
        augmentation: a bbox-aware albumentations ``Compose`` for the training split.
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the training process.
        image_size: longer image side fed to the model; ``None`` keeps the processor's setting.
        on_invalid: ``raise`` or ``skip`` bad records (see :class:`CocoDetectionDataset`).
        prepare: called once before the splits are read, e.g. to generate a synthetic dataset.
        pin_memory: DataLoader ``pin_memory`` (faster host-to-GPU copies).
        cache_images: keep decoded images in memory (see :class:`CocoDetectionDataset`).
    """

    def __init__(
        self,
        train: CocoSplit | dict,
        root: str | None = None,
        val: CocoSplit | dict | None = None,
        test: CocoSplit | dict | None = None,
        augmentation: Any | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: int | None = None,
        on_invalid: InvalidPolicy = "raise",
        prepare: Callable[[], None] | None = None,
        pin_memory: bool = False,
        cache_images: bool = False,
    ) -> None:
        super().__init__()
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
        self.collate_fn: Callable | None = None
        self.datasets: dict[str, CocoDetectionDataset] = {}

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        for name, split in self.splits.items():
            if name not in self.datasets:
                transform = self.augmentation if name == "train" else None
                self.datasets[name] = CocoDetectionDataset(split, transform=transform, on_invalid=self.on_invalid,
                                                           cache_images=self.cache_images)  # fmt: skip
                if transform is not None:
                    # albumentations draws from a generator of its own that no global seed reaches:
                    # seed it from torch's, so that `seed=` makes the augmentations reproducible too.
                    _seed_augmentation(transform, int(torch.randint(0, 2**31 - 1, (1,))) + self._rank)

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
            raise RuntimeError("CocoDetectionDataModule.collate_fn is unset: give it a DetectionCollator before loading.")
        self.setup()
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=self._seed_worker_augmentation if shuffle else None,
            drop_last=False,
        )

    def _seed_worker_augmentation(self, worker_id: int) -> None:
        # Each worker holds a copy of the pipeline; without a reseed every worker would draw the
        # same augmentations. torch gives each worker a distinct seed derived from the run's seed.
        # Lightning adds its own worker seeding only where a loader has none: call it here (it
        # also mixes in the process rank, so DDP ranks draw differently).
        pl_worker_init_function(worker_id, rank=self._rank)
        info = get_worker_info()
        if info is not None:
            _seed_augmentation(info.dataset.transform, int(torch.randint(0, 2**31 - 1, (1,))))

    @property
    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _seed_augmentation(augmentation: Any | None, seed: int) -> None:
    if augmentation is not None and hasattr(augmentation, "set_random_seed"):
        augmentation.set_random_seed(seed)


def _as_split(spec: CocoSplit | dict, root: str | None) -> CocoSplit:
    split = spec if isinstance(spec, CocoSplit) else CocoSplit(**spec)
    if root is None:
        return split
    annotation_file = str(Path(root) / split.annotation_file) if split.annotation_file else None
    return CocoSplit(images_dir=str(Path(root) / split.images_dir), annotation_file=annotation_file)
