"""The OutputAdapter contract between a detection model family and the rest of cvexp."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from cvexp.data.coco import DetectionTarget, LabelMap


@dataclass
class AdaptedOutput:
    """A model's training signal: the loss to optimise and its named parts to log."""

    loss: torch.Tensor
    loss_parts: dict[str, torch.Tensor]


@dataclass
class Detections:
    """Detections of one image in COCO terms: absolute ``xywh`` boxes and the dataset's category ids."""

    image_id: int
    boxes: torch.Tensor  # (N, 4) float32
    scores: torch.Tensor  # (N,) float32
    category_ids: torch.Tensor  # (N,) int64

    def to_coco_results(self) -> list[dict[str, Any]]:
        """Rows of a COCO results json."""
        return [
            {"image_id": self.image_id, "category_id": int(c), "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
            for box, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.category_ids.tolist(), strict=True)
        ]


class OutputAdapter(ABC):
    """Translates between one model family and cvexp's COCO-shaped world.

    - :meth:`adapt_targets`: dataset targets -> the ``labels`` the model's loss expects.
    - :meth:`adapt_output`: model output -> loss and loss parts.
    - :meth:`format_predictions`: model output -> :class:`Detections` in original image
      coordinates, with no score threshold (mAP needs every detection).
    - :meth:`format_targets`: model ``labels`` -> targets again (the inverse of ``adapt_targets``).

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: whether the model's forward takes ``pixel_mask`` (ViT-style models don't).
    """

    #: What the model family's outputs mean; recorded in the model artifact (``cvexp.json``).
    task: str = "detection"

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = True) -> None:
        self.label_map = label_map
        self.pass_pixel_mask = pass_pixel_mask

    def model_inputs(self, batch: dict[str, Any], with_labels: bool = True) -> dict[str, Any]:
        """The keyword arguments of the model's forward for ``batch``."""
        inputs = {"pixel_values": batch["pixel_values"]}
        if self.pass_pixel_mask:
            inputs["pixel_mask"] = batch["pixel_mask"]
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs

    @abstractmethod
    def adapt_targets(self, targets: list[DetectionTarget]) -> list[dict[str, torch.Tensor]]: ...

    @abstractmethod
    def adapt_output(self, outputs: Any) -> AdaptedOutput: ...

    @abstractmethod
    def format_predictions(self, outputs: Any, targets: list[DetectionTarget]) -> list[Detections]: ...

    @abstractmethod
    def format_targets(self, labels: list[dict[str, torch.Tensor]], targets: list[DetectionTarget]) -> list[DetectionTarget]: ...
