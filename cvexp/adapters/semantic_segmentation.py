"""Semantic segmentation: any ``AutoModelForSemanticSegmentation`` (SegFormer, UperNet, DPT, ...).

Masks hold the dataset's category ids (a mask PNG's pixel values); the adapter maps them to
contiguous labels with a lookup table, resizes them to the model input (nearest, so no new labels
appear) and leaves :data:`~cvexp.data.targets.IGNORE_INDEX` pixels to the model's loss to ignore
(``semantic_loss_ignore_index``). Predictions: the logits upsampled to each image's original size
(bilinear, as the HF ``post_process_semantic_segmentation`` does), the argmax class and its probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cvexp.adapters.base import AdaptedOutput, OutputAdapter
from cvexp.adapters.predictions import SegmentationMap
from cvexp.data.labels import LabelMap
from cvexp.data.targets import IGNORE_INDEX, SegmentationTarget


class SemanticSegmentationAdapter(OutputAdapter):
    """A class per pixel.

    Args:
        label_map: contiguous training ids <-> the dataset's category ids (pixel values, 0-254).
        pass_pixel_mask: segmentation models take no pixel mask (their processors resize to a fixed size).
    """

    task = "semantic_segmentation"

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = False) -> None:
        super().__init__(label_map, pass_pixel_mask)
        # category id (pixel value) -> contiguous label; unknown values and IGNORE_INDEX -> IGNORE_INDEX
        self._to_label = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
        for index, category in enumerate(label_map.categories):
            self._to_label[category.id] = index
        self._to_category = torch.tensor([category.id for category in label_map.categories], dtype=torch.int64)

    def adapt_targets(self, targets: list[SegmentationTarget], pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W)`` contiguous labels at the input's size; padding (outside ``pixel_mask``) is ignored."""
        if pixel_mask is None:
            raise ValueError("SemanticSegmentationAdapter.adapt_targets needs the batch's pixel_mask (the input size).")
        batch, height, width = pixel_mask.shape
        labels = torch.full((batch, height, width), IGNORE_INDEX, dtype=torch.int64)
        for index, target in enumerate(targets):
            rows, columns = int(pixel_mask[index].any(1).sum()), int(pixel_mask[index].any(0).sum())
            mask = self._to_label[target.mask.clamp(0, 255)]
            resized = F.interpolate(mask[None, None].float(), size=(rows, columns), mode="nearest-exact")[0, 0].long()
            labels[index, :rows, :columns] = resized
        return labels

    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        return AdaptedOutput(outputs.loss, {"loss_ce": outputs.loss.detach()})

    exported_output_names = ("logits",)
    exported_format = "pixel_logits"

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor]:
        """``logits`` ``(B, K, h, w)`` over the whole input, in training order. Their upsampling to each image's own size
        stays outside the graph (the sizes differ within a batch): :meth:`format_exported`, or numpy when served."""
        return (outputs.logits.float(),)

    def format_exported(self, exported: Sequence[torch.Tensor], targets: list[Any]) -> list[SegmentationMap]:
        predictions = []
        for logits, target in zip(torch.as_tensor(exported[0]).float(), targets, strict=True):
            upsampled = F.interpolate(logits[None], size=tuple(target.size), mode="bilinear", align_corners=False)[0]
            confidence, labels = upsampled.softmax(0).max(0)
            predictions.append(SegmentationMap(target.image_id, self._to_category.to(labels.device)[labels].cpu(), confidence.cpu()))
        return predictions

    def format_predictions(self, outputs: Any, targets: list[Any]) -> list[SegmentationMap]:
        # The exported graph's post-processing, run here by PyTorch: one definition for both.
        return self.format_exported(self.exported_outputs(outputs), targets)
