"""Image classification: any ``AutoModelForImageClassification`` (ResNet, ConvNeXt, ViT, ...).

The model computes its own cross-entropy from integer ``labels``; predictions are the softmax over
every class, in the dataset's category ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cvexp.adapters.base import AdaptedOutput, OutputAdapter
from cvexp.adapters.predictions import ClassScores
from cvexp.data.labels import LabelMap
from cvexp.data.targets import ClassificationTarget


class ImageClassificationAdapter(OutputAdapter):
    """One class per image, softmax scores.

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: classification models take no pixel mask (their processors never pad).
    """

    task = "classification"

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = False) -> None:
        super().__init__(label_map, pass_pixel_mask)

    def adapt_targets(self, targets: list[ClassificationTarget], pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.label_map.to_contiguous(torch.tensor([target.category_id for target in targets], dtype=torch.int64))

    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        return AdaptedOutput(outputs.loss, {"loss_ce": outputs.loss.detach()})

    exported_output_names = ("scores",)
    exported_format = "class_scores"

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor]:
        """``scores`` ``(B, K)``: each image's softmax over the classes, in training order (the metadata's categories)."""
        return (outputs.logits.float().softmax(-1),)

    def format_exported(self, exported: Sequence[torch.Tensor], targets: list[Any]) -> list[ClassScores]:
        probabilities = torch.as_tensor(exported[0]).float().cpu()
        ids = self.label_map.to_category_ids(torch.arange(self.label_map.num_labels))
        return [ClassScores(target.image_id, scores, ids) for scores, target in zip(probabilities, targets, strict=True)]

    def format_predictions(self, outputs: Any, targets: list[Any]) -> list[ClassScores]:
        # The exported graph's post-processing, run here by PyTorch: one definition for both.
        return self.format_exported(self.exported_outputs(outputs), targets)
