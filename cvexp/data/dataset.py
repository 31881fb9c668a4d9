"""The base of every labelled image dataset: validated records in, samples out.

A reader validates a split up front (:mod:`cvexp.data.validation` for COCO; the classification and
segmentation readers likewise) and hands over its records; :class:`LabelledImageDataset` loads,
caches and augments the images, and leaves to each task's dataset only what its target is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvexp.data.augmentation import Augmentation
from cvexp.data.images import UnreadableImage, load_rgb_image
from cvexp.data.labels import Category, LabelMap
from cvexp.data.sampling import sample_seed
from cvexp.data.targets import Sample
from cvexp.data.validation import DEFAULT_MAX_IMAGE_PIXELS, InvalidPolicy, SplitReport
from cvexp.errors import DatasetError


class LabelledImageDataset(torch.utils.data.Dataset):
    """Images of one validated split, each with its target, optionally augmented.

    Args:
        images_dir: the folder that ``file_name`` of each record is relative to.
        images: image id -> record (at least ``file_name``; readers add what their targets need).
        categories: the split's classes (the dataset's own ids and names), in training-label order.
        report: what validation kept and dropped.
        transform: an :class:`~cvexp.data.augmentation.Augmentation` (composed by :meth:`compose` for
            what this dataset's targets hold) or an albumentations ``Compose`` used as it is.
        on_invalid: ``raise`` stops on an image that cannot be read at training time; ``skip``
            returns an :class:`UnreadableImage`, which the collator leaves out and counts.
        cache_images: keep each decoded image in memory after its first read (per DataLoader worker).
        max_image_pixels: the largest image accepted (width x height), a decompression-bomb guard.
        name: the split's name, for messages.
    """

    def __init__(self, images_dir: Path, images: dict[int, dict[str, Any]], categories: list[Category], report: SplitReport,
                 transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, name: str = "") -> None:  # fmt: skip
        self.images_dir = Path(images_dir)
        self.images = images
        self.image_ids: list[int] = list(images)
        self.label_map = LabelMap(list(categories))
        self.report = report
        self.transform = self.compose(transform) if isinstance(transform, Augmentation) else transform
        self.on_invalid = on_invalid
        self.max_image_pixels = max_image_pixels
        self.name = name
        self._image_cache: dict[int, np.ndarray] | None = {} if cache_images else None
        # Per-sample augmentation seeds (set by the DataModule): each sample's augmentation comes from
        # (seed, epoch, index) alone. The epoch lives in shared memory so that worker processes see it.
        self.augmentation_seed: int | None = None
        self.epoch = torch.zeros((), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.images[image_id]["file_name"]

    def __getitem__(self, index: int) -> Sample | UnreadableImage:
        # Index i + k * len(self) is the k-th read of image i in an epoch (repeat-factor sampling): the same image,
        # augmented with a seed of its own.
        image_id = self.image_ids[index % len(self.image_ids)]
        try:
            image = self._load_image(image_id)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
            if self.on_invalid == "raise":
                raise DatasetError(f"{self.image_path(image_id)}: image {image_id} cannot be read ({type(error).__name__}: {error}); it "
                                   "passed validation before training, so it changed since or the disk failed. Fix: restore the "
                                   "file, or set data.on_invalid=skip to skip such images (counted in the run's summary).") from error  # fmt: skip
            return UnreadableImage(image_id, str(self.image_path(image_id)), f"{type(error).__name__}: {error}")
        if self.transform is not None and self.augmentation_seed is not None:
            self.transform.set_random_seed(sample_seed(self.augmentation_seed, int(self.epoch), index))
        return self.sample(image_id, image)

    def image_classes(self) -> list[set[int]]:
        """Each image's category ids, in index order: what class-aware sampling (``sampler=repeat_factor``) counts."""
        raise DatasetError(f"data.sampler: {type(self).__name__} (split {self.name or '?'}) does not list its images' classes without "
                           "reading every target, so repeat-factor sampling cannot weigh them. Fix: sampler=none for this data.")  # fmt: skip

    @staticmethod
    def compose(augmentation: Augmentation) -> Any:
        """The ``Compose`` of ``augmentation`` for this dataset's targets: images (and a ``mask=``) by default."""
        return augmentation.for_images()

    @abstractmethod
    def sample(self, image_id: int, image: np.ndarray) -> Sample:
        """The sample of ``image_id`` from its decoded ``image``: the target built, the transform (if any) applied to both."""

    def _load_image(self, image_id: int) -> np.ndarray:
        if self.max_image_pixels:
            Image.MAX_IMAGE_PIXELS = max(self.max_image_pixels, Image.MAX_IMAGE_PIXELS or 0)  # validated against data.max_image_pixels
        return cached_array(self._image_cache, image_id, lambda: load_rgb_image(self.image_path(image_id)))


def cached_array(cache: dict[int, np.ndarray] | None, key: int, load: Callable[[], np.ndarray]) -> np.ndarray:
    """``load()``, kept read-only in ``cache`` (when there is one) for every later epoch to share."""
    if cache is None:
        return load()
    array = cache.get(key)
    if array is None:
        array = load()
        array.flags.writeable = False  # shared by every epoch: a transform must not write into it
        cache[key] = array
    return array
