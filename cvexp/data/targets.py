"""What each task's samples hold besides the image: the ground truth, in the dataset's own terms.

A reader (COCO, CSV, ImageFolder, mask PNGs) produces :class:`Sample` objects whose ``target`` is
one of these; the task's adapter translates it for a model and back. Category ids are always the
dataset's own (COCO category ids, the pixel values of a mask, the columns of a classification CSV);
contiguous training labels exist only inside the model (:class:`cvexp.data.coco.LabelMap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: The mask value that no loss or metric counts (unlabelled pixels), as in the HF segmentation examples.
IGNORE_INDEX = 255


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
    masks: torch.Tensor | None = None  # (N, H, W) bool, instance segmentation only


@dataclass
class ClassificationTarget:
    """The class of one image."""

    image_id: int
    category_id: int  # the dataset's own id
    size: tuple[int, int]  # (height, width) of the image as the model sees it, before resizing
    file_name: str = ""


@dataclass
class SegmentationTarget:
    """The class of every pixel of one image (semantic segmentation).

    ``mask`` holds the dataset's category ids; :data:`IGNORE_INDEX` marks pixels that count nowhere.
    """

    image_id: int
    mask: torch.Tensor  # (H, W) int64
    size: tuple[int, int]
    file_name: str = ""


@dataclass
class ImageInfo:
    """An image without ground truth (prediction, serving): what an adapter needs to place its predictions."""

    image_id: int
    size: tuple[int, int]  # (height, width)
    file_name: str = ""


@dataclass
class Sample:
    """One image (HWC uint8 RGB) and its target (a detection, classification or segmentation target; :class:`ImageInfo` when unlabelled)."""

    image: np.ndarray
    target: Any
