"""COCO-format detection dataset, on records checked by :mod:`cvexp.data.validation` before training.

Boxes stay in the dataset's own terms here (absolute ``xywh``, the dataset's category ids);
translating them for a model is the adapter's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask

from cvexp.data.augmentation import Augmentation
from cvexp.data.dataset import LabelledImageDataset
from cvexp.data.labels import LabelMap
from cvexp.data.targets import DetectionTarget, Sample
from cvexp.data.validation import (
    DEFAULT_MAX_IMAGE_PIXELS,
    CocoRecords,
    ImageHeaderCache,
    InvalidPolicy,
    load_annotation_file,
    validate_coco_split,
)


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


class CocoDetectionDataset(LabelledImageDataset):
    """Images and boxes (and, for instance segmentation, masks) of one COCO split.

    The split is validated when the dataset is built (:func:`cvexp.data.validation.validate_coco_split`):
    every record and every image header, before anything trains.

    Args:
        images_dir: the folder of the split's images.
        annotation_file: its COCO json (default: ``images_dir/_annotations.coco.json``).
        transform: a bbox-aware albumentations ``Compose`` (:meth:`cvexp.data.augmentation.Augmentation.for_boxes`).
        on_invalid: ``raise`` stops at the first bad record with a message naming it; ``skip``
            drops the record (an image with its annotations), counts it and lists it in ``report``.
        cache_images: keep each decoded image in memory after its first read (each DataLoader
            worker holds its own copy). Worth it for small datasets read for many epochs: decoding
            is about a third of the data time of the default run.
        max_image_pixels: the largest image accepted (width x height), a decompression-bomb guard.
        header_cache: remembers checked image headers between runs (see :class:`ImageHeaderCache`).
        name: the split's name (train, val, test), for messages.
        with_masks: instance segmentation: every annotation needs a ``segmentation`` (polygons or
            RLE, checked up front); targets carry a binary mask per instance, moved with the image.
        records: the split's records already converted to COCO in memory (by the readers of other
            layouts, :mod:`cvexp.data.formats`); ``annotation_file`` is then not read.
    """

    def __init__(self, images_dir: str, annotation_file: str | None = None, transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, header_cache: ImageHeaderCache | None = None,
                 name: str = "", with_masks: bool = False, records: CocoRecords | None = None) -> None:  # fmt: skip
        split = CocoSplit(str(images_dir), annotation_file)
        #: The COCO json read, or ``None`` for records converted from another layout.
        self.annotation_path = split.annotation_path if records is None else None
        self.with_masks = with_masks
        validated = validate_coco_split(records or split.annotation_path, Path(split.images_dir), name, on_invalid, max_image_pixels,
                                        header_cache, require_masks=with_masks)  # fmt: skip
        self._annotations = validated.annotations
        self.categories = validated.categories
        used = {a["category_id"] for annotations in self._annotations.values() for a in annotations}
        label_map = LabelMap.from_records(self.categories, used)
        super().__init__(Path(split.images_dir), validated.images, label_map.categories, validated.report, transform, on_invalid,
                         cache_images, max_image_pixels, name)  # fmt: skip

    @staticmethod
    def compose(augmentation: Augmentation) -> Any:
        return augmentation.for_boxes()

    def image_classes(self) -> list[set[int]]:
        return [{int(a["category_id"]) for a in self._annotations[image_id]} for image_id in self.image_ids]

    def coco_content(self) -> dict[str, Any]:
        """The split as validation kept it, as a COCO dict (``file_name`` relative to ``images_dir``): what cvexp understood of the data."""
        annotations = [annotation for image_id in self.image_ids for annotation in self._annotations[image_id]]
        return {"images": [self.images[image_id] for image_id in self.image_ids], "annotations": annotations, "categories": self.categories}

    def sample(self, image_id: int, image: np.ndarray) -> Sample:
        annotations = self._annotations[image_id]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        category_ids = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        iscrowd = np.array([a.get("iscrowd", 0) for a in annotations], dtype=np.int64)
        area = np.array([a["area"] for a in annotations], dtype=np.float32)
        height, width = image.shape[:2]
        masks = [annotation_mask(a["segmentation"], height, width) for a in annotations] if self.with_masks else None
        if self.transform is not None:
            # Validation clipped every box to the image and dropped those without area, as albumentations needs.
            extra = {"masks": masks} if masks else {}
            out = self.transform(image=image, bboxes=boxes, category_ids=category_ids, annotation_indices=np.arange(len(boxes)), **extra)
            image = out["image"]
            kept = np.asarray(out["annotation_indices"], dtype=np.int64)
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            category_ids, iscrowd = category_ids[kept], iscrowd[kept]
            area = boxes[:, 2] * boxes[:, 3]
            if masks:
                masks = [np.asarray(out["masks"][index]) for index in kept]
                area = np.array([m.sum() for m in masks], dtype=np.float32).reshape(-1)
        target = DetectionTarget(
            image_id=int(image_id),
            boxes=torch.from_numpy(boxes),
            category_ids=torch.from_numpy(category_ids),
            iscrowd=torch.from_numpy(iscrowd),
            area=torch.from_numpy(np.asarray(area, dtype=np.float32)),
            size=(int(image.shape[0]), int(image.shape[1])),
            file_name=self.images[image_id]["file_name"],
            masks=None if masks is None else torch.from_numpy(np.stack(masks).astype(bool) if masks else np.zeros((0, *image.shape[:2]), bool)),
        )
        return Sample(image=image, target=target)


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The ``(height, width)`` uint8 mask of a COCO ``segmentation`` (polygons or RLE), as pycocotools' ``annToMask`` makes it."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle)


__all__ = ["CocoDetectionDataset", "CocoSplit", "annotation_mask", "load_annotation_file"]
