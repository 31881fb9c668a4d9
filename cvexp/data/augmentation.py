"""Albumentations pipelines built from the ``augmentation`` config group, for every task's targets.

One list of transforms serves every task: each dataset asks for the ``Compose`` that moves what its
targets hold with the pixels — boxes (detection, instance segmentation), masks (semantic
segmentation: albumentations moves a ``mask=`` with any ``Compose``), or nothing (classification).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A

# The dataset passes these alongside the boxes so that labels follow the boxes that survive.
BBOX_LABEL_FIELDS = ("category_ids", "annotation_indices")


class Augmentation:
    """The transforms of an ``augmentation`` option, composed for the targets a dataset has.

    Args:
        transforms: albumentations transforms, applied in order.
        min_visibility: drop a box when less than this fraction of it stays in the image.
        min_area: drop a box whose area (px²) falls below this after the transforms.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform] = (), min_visibility: float = 0.0, min_area: float = 1.0) -> None:
        self.transforms = list(transforms)
        self.min_visibility = min_visibility
        self.min_area = min_area

    def for_boxes(self) -> A.Compose:
        """A ``Compose`` that moves COCO ``xywh`` boxes (and instance ``masks=``) with the pixels."""
        return detection_compose(self.transforms, self.min_visibility, self.min_area)

    def for_images(self) -> A.Compose:
        """A ``Compose`` for images alone, or images with a per-pixel ``mask=``."""
        return A.Compose(list(self.transforms))


def detection_compose(transforms: Sequence[A.BasicTransform] = (), min_visibility: float = 0.0, min_area: float = 1.0) -> A.Compose:
    """Wraps ``transforms`` in a ``Compose`` that moves COCO ``xywh`` boxes with the pixels.

    Args:
        transforms: albumentations transforms, applied in order.
        min_visibility: drop a box when less than this fraction of it stays in the image.
        min_area: drop a box whose area (px²) falls below this after the transforms.
    """
    return A.Compose(
        list(transforms),
        bbox_params=A.BboxParams(
            format="coco",
            label_fields=list(BBOX_LABEL_FIELDS),
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
        ),
    )
