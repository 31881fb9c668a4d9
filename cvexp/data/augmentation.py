"""Bbox-aware albumentations pipelines built from the ``augmentation`` config group."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A

# The dataset passes these alongside the boxes so that labels follow the boxes that survive.
BBOX_LABEL_FIELDS = ("category_ids", "annotation_indices")


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
