"""What a model says about one image, per task, in the dataset's terms (its category ids, original pixels).

Adapters produce these from model outputs (``format_predictions``); metrics, reports, the results
files, served responses and drift statistics read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cvexp.deployment.responses import mask_rles


@dataclass
class Detections:
    """Detections of one image in COCO terms: absolute ``xywh`` boxes and the dataset's category ids.

    Instance segmentation adds ``masks``: one COCO RLE (``{"size": [h, w], "counts": str}``) per
    detection, in the original image's pixels.
    """

    image_id: int
    boxes: torch.Tensor  # (N, 4) float32
    scores: torch.Tensor  # (N,) float32
    category_ids: torch.Tensor  # (N,) int64
    masks: list[dict[str, Any]] | None = None

    def to_coco_results(self) -> list[dict[str, Any]]:
        """Rows of a COCO results json (with ``segmentation`` RLEs when there are masks)."""
        rows = [
            {"image_id": self.image_id, "category_id": int(c), "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
            for box, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.category_ids.tolist(), strict=True)
        ]
        for row, mask in zip(rows, self.masks or (), strict=False):
            row["segmentation"] = mask
        return rows


def masks_to_rles(logits: torch.Tensor, size: tuple[int, int]) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """Instance masks from mask logits ``(N, h, w)`` over the whole image: upsampled to ``size`` (bilinear, as the
    Hugging Face post-processors do) and thresholded at 0 (probability 0.5).

    Returns the COCO RLEs (``counts`` as text, JSON-ready), the ``xywh`` box around each mask (zeros for an
    empty one) and each mask's mean probability inside it (0 for an empty one).
    """
    upsampled = F.interpolate(logits.float()[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    binary = upsampled > 0
    quality = (upsampled.sigmoid() * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
    rles, boxes = mask_rles(binary.cpu().numpy())
    return rles, torch.from_numpy(boxes), quality.cpu()


def masks_at_input(masks: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Instance masks ``(N, H, W)`` of an image resized (nearest) to where the image lies in the model input
    (``pixel_mask``, ``(H', W')``), zero over the padding: ``(N, H', W')`` float."""
    rows, columns = int(pixel_mask.any(1).sum()), int(pixel_mask.any(0).sum())
    placed = torch.zeros((len(masks), *pixel_mask.shape), dtype=torch.float32)
    if len(masks):
        placed[:, :rows, :columns] = F.interpolate(masks[:, None].float(), size=(rows, columns), mode="nearest-exact")[:, 0]
    return placed


@dataclass
class ClassScores:
    """Class probabilities of one image: ``scores[i]`` belongs to ``category_ids[i]`` (every class of the model)."""

    image_id: int
    scores: torch.Tensor  # (K,) float32, summing to 1
    category_ids: torch.Tensor  # (K,) int64

    @property
    def category_id(self) -> int:
        """The predicted class (highest score)."""
        return int(self.category_ids[int(torch.argmax(self.scores))])


@dataclass
class SegmentationMap:
    """The predicted class of every pixel of one image, at its original size.

    ``confidence`` is the winning class's probability per pixel (for drift and uncertainty maps).
    """

    image_id: int
    mask: torch.Tensor  # (H, W) int64, the dataset's category ids
    confidence: torch.Tensor | None = field(default=None, repr=False)  # (H, W) float32
