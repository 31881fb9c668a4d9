"""COCO-format detection dataset, on records checked by :mod:`cvexp.data.validation` before training.

Boxes stay in the dataset's own terms here (absolute ``xywh``, the dataset's category ids);
translating them for a model is the adapter's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from cvexp.data.sampling import sample_seed
from cvexp.data.validation import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageHeaderCache,
    InvalidPolicy,
    SplitReport,
    load_annotation_file,
    validate_coco_split,
)
from cvexp.errors import DatasetError


@dataclass(frozen=True)
class Category:
    """A dataset category: its own COCO id and name."""

    id: int
    name: str


class LabelMap:
    """Maps the dataset's COCO category ids to contiguous training labels ``0..K-1`` and back.

    A plain class, not a dataclass: Hydra's ``instantiate`` would turn a dataclass argument into
    a config node.
    """

    def __init__(self, categories: list[Category]) -> None:
        self.categories = list(categories)
        # Built once: both lookups run for every image of every batch.
        self._index_of_id = {category.id: index for index, category in enumerate(self.categories)}
        self._ids = torch.tensor([category.id for category in self.categories], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"LabelMap({self.categories!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other.categories == self.categories

    @property
    def num_labels(self) -> int:
        return len(self.categories)

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous label -> class name, as Hugging Face model configs store it."""
        return {index: category.name for index, category in enumerate(self.categories)}

    @property
    def label2id(self) -> dict[str, int]:
        return {category.name: index for index, category in enumerate(self.categories)}

    def to_contiguous(self, category_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._index_of_id[int(c)] for c in category_ids], dtype=torch.int64)

    def to_category_ids(self, labels: torch.Tensor) -> torch.Tensor:
        return self._ids[labels.cpu().long()]

    @classmethod
    def from_records(cls, categories: list[dict], used_ids: set[int]) -> LabelMap:
        """Every category of a COCO file, except a supercategory that has no boxes of its own.

        Roboflow exports list their supercategory (e.g. ``0 RBC-WBC``) as a category; training a
        class that never occurs would only cost capacity, so it is left out.
        """
        ordered = sorted(categories, key=lambda c: c["id"])
        parents = {c.get("supercategory") for c in ordered}
        kept = [c for c in ordered if c["id"] in used_ids or c["name"] not in parents]
        return cls([Category(int(c["id"]), str(c["name"])) for c in kept])


@dataclass
class DetectionTarget:
    """Ground truth of one image in COCO terms: absolute ``xywh`` boxes, dataset category ids."""

    image_id: int
    boxes: torch.Tensor  # (N, 4) float32, absolute xywh in the current image
    category_ids: torch.Tensor  # (N,) int64, the dataset's own ids
    iscrowd: torch.Tensor  # (N,) int64
    area: torch.Tensor  # (N,) float32, as the annotation file gives it (COCO evaluation uses it)
    size: tuple[int, int]  # (height, width) of the image as the model sees it, before resizing
    file_name: str = ""


@dataclass
class DetectionSample:
    """One image (HWC uint8 RGB) and its target."""

    image: np.ndarray
    target: DetectionTarget


@dataclass
class CocoSplit:
    """Where one split lives: an images folder and its COCO annotation file."""

    images_dir: str
    annotation_file: str | None = None  # default: ``images_dir/_annotations.coco.json``

    @property
    def annotation_path(self) -> Path:
        if self.annotation_file:
            return Path(self.annotation_file)
        return Path(self.images_dir) / "_annotations.coco.json"


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Images and boxes of one COCO split, optionally passed through a bbox-aware augmentation.

    The split is validated when the dataset is built (:func:`cvexp.data.validation.validate_coco_split`):
    every record and every image header, before anything trains.

    Args:
        split: the images folder and annotation file.
        transform: an albumentations ``Compose`` built by :func:`cvexp.data.augmentation.detection_compose`.
        on_invalid: ``raise`` stops at the first bad record with a message naming it; ``skip``
            drops the record (an image with its annotations), counts it and lists it in ``report``.
            An image that cannot be read later (changed since, disk error) is skipped likewise: the
            sample comes back as an :class:`UnreadableImage`, which the collator leaves out and counts.
        cache_images: keep each decoded image in memory after its first read (each DataLoader
            worker holds its own copy). Worth it for small datasets read for many epochs: decoding
            is about a third of the data time of the default run.
        max_image_pixels: the largest image accepted (width x height), a decompression-bomb guard.
        header_cache: remembers checked image headers between runs (see :class:`ImageHeaderCache`).
        name: the split's name (train, val, test), for messages.
    """

    def __init__(self, split: CocoSplit, transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, header_cache: ImageHeaderCache | None = None,
                 name: str = "") -> None:  # fmt: skip
        self.split = split
        self.transform = transform
        self.on_invalid = on_invalid
        self.max_image_pixels = max_image_pixels
        self.annotation_path = split.annotation_path
        validated = validate_coco_split(self.annotation_path, Path(split.images_dir), name, on_invalid, max_image_pixels, header_cache)
        self.images: dict[int, dict[str, Any]] = validated.images
        self._annotations = validated.annotations
        self.categories = validated.categories
        self.report: SplitReport = validated.report
        used = {a["category_id"] for annotations in self._annotations.values() for a in annotations}
        self.label_map = LabelMap.from_records(self.categories, used)
        self.image_ids: list[int] = list(self.images)
        self._image_cache: dict[int, np.ndarray] | None = {} if cache_images else None
        # Per-sample augmentation seeds (set by the DataModule): each sample's augmentation comes from
        # (seed, epoch, index) alone. The epoch lives in shared memory so that worker processes see it.
        self.augmentation_seed: int | None = None
        self.epoch = torch.zeros((), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        return Path(self.split.images_dir) / self.images[image_id]["file_name"]

    def __getitem__(self, index: int) -> DetectionSample | UnreadableImage:
        image_id = self.image_ids[index]
        info = self.images[image_id]
        try:
            image = self._load_image(image_id)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
            if self.on_invalid == "raise":
                raise DatasetError(f"{self.image_path(image_id)}: image {image_id} cannot be read ({type(error).__name__}: {error}); it "
                                   "passed validation before training, so it changed since or the disk failed. Fix: restore the "
                                   "file, or set data.on_invalid=skip to skip such images (counted in the run's summary).") from error  # fmt: skip
            return UnreadableImage(image_id, str(self.image_path(image_id)), f"{type(error).__name__}: {error}")
        annotations = self._annotations[image_id]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        category_ids = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        iscrowd = np.array([a.get("iscrowd", 0) for a in annotations], dtype=np.int64)
        area = np.array([a["area"] for a in annotations], dtype=np.float32)
        if self.transform is not None:
            if self.augmentation_seed is not None:
                self.transform.set_random_seed(sample_seed(self.augmentation_seed, int(self.epoch), index))
            # Validation clipped every box to the image and dropped those without area, as albumentations needs.
            out = self.transform(image=image, bboxes=boxes, category_ids=category_ids, annotation_indices=np.arange(len(boxes)))
            image = out["image"]
            kept = np.asarray(out["annotation_indices"], dtype=np.int64)
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            category_ids, iscrowd = category_ids[kept], iscrowd[kept]
            area = boxes[:, 2] * boxes[:, 3]
        target = DetectionTarget(
            image_id=int(image_id),
            boxes=torch.from_numpy(boxes),
            category_ids=torch.from_numpy(category_ids),
            iscrowd=torch.from_numpy(iscrowd),
            area=torch.from_numpy(np.asarray(area, dtype=np.float32)),
            size=(int(image.shape[0]), int(image.shape[1])),
            file_name=info["file_name"],
        )
        return DetectionSample(image=image, target=target)

    def _load_image(self, image_id: int) -> np.ndarray:
        if self.max_image_pixels:
            Image.MAX_IMAGE_PIXELS = max(self.max_image_pixels, Image.MAX_IMAGE_PIXELS or 0)  # validated against data.max_image_pixels
        if self._image_cache is None:
            return load_rgb_image(self.image_path(image_id))
        image = self._image_cache.get(image_id)
        if image is None:
            image = load_rgb_image(self.image_path(image_id))
            image.flags.writeable = False  # shared by every epoch: a transform must not write into it
            self._image_cache[image_id] = image
        return image


@dataclass(frozen=True)
class UnreadableImage:
    """A sample whose image could not be read at training time (``on_invalid=skip``): left out of its batch and counted."""

    image_id: int
    path: str
    reason: str


def load_rgb_image(path: Path | BinaryIO) -> np.ndarray:
    """Loads any image (a file path, or an open binary file) as HWC uint8 RGB, upright as its EXIF orientation says."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on white: dropping alpha would expose whatever colour transparent pixels hold.
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        return np.asarray(image.convert("RGB"))


__all__ = [
    "Category",
    "CocoDetectionDataset",
    "CocoSplit",
    "DatasetError",
    "DetectionSample",
    "DetectionTarget",
    "LabelMap",
    "UnreadableImage",
    "load_annotation_file",
    "load_rgb_image",
]
