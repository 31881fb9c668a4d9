"""Adapters for the DETR family of Hugging Face detectors.

Two scoring schemes cover the family:

- :class:`DetrAdapter` -- softmax over classes plus a "no object" class, one detection per query
  (DETR, YOLOS, Table Transformer).
- :class:`SigmoidDetrAdapter` -- per-class sigmoid (focal loss) with no "no object" class; the
  top-k of queries x classes are the detections (Conditional, Deformable, DAB-DETR).

Both train on normalised ``(cx, cy, w, h)`` boxes with contiguous class labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cvexp.adapters.base import AdaptedOutput, Detections, OutputAdapter
from cvexp.adapters.mask_classification import instance_masks
from cvexp.adapters.predictions import masks_at_input, masks_to_rles
from cvexp.data.labels import LabelMap
from cvexp.data.targets import DetectionTarget


class DetrAdapter(OutputAdapter):
    """Softmax scoring with a trailing no-object class; one detection per query.

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: False for models whose forward takes no ``pixel_mask`` (YOLOS).
    """

    def adapt_targets(self, targets: list[DetectionTarget], pixel_mask: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        labels = []
        for target in targets:
            height, width = target.size
            keep = trained_instances(target)
            x, y, w, h = target.boxes[keep].unbind(-1)
            boxes = torch.stack([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height], dim=-1)
            labels.append({"class_labels": self.label_map.to_contiguous(target.category_ids[keep]), "boxes": boxes.float()})
        return labels

    def format_targets(self, labels: list[dict[str, torch.Tensor]], targets: list[DetectionTarget]) -> list[DetectionTarget]:
        formatted = []
        for label, target in zip(labels, targets, strict=True):
            boxes = _cxcywh_to_abs_xywh(label["boxes"], target.size)
            formatted.append(
                DetectionTarget(
                    image_id=target.image_id,
                    boxes=boxes,
                    category_ids=self.label_map.to_category_ids(label["class_labels"]),
                    iscrowd=torch.zeros(len(boxes), dtype=torch.int64),
                    area=boxes[:, 2] * boxes[:, 3],
                    size=target.size,
                    file_name=target.file_name,
                )
            )
        return formatted

    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        # The model's ``loss`` is already weighted by its config; the parts are logged unweighted,
        # for the last decoder layer only (auxiliary-loss layers add ``_0``, ``_1``, ... copies).
        parts = {name: value.detach() for name, value in outputs.loss_dict.items() if name.startswith("loss") and not name[-1].isdigit()}
        return AdaptedOutput(loss=outputs.loss, loss_parts=parts)

    exported_output_names = ("boxes", "scores", "labels")
    exported_format = "ranked_boxes"

    def class_scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query index, contiguous label, score), each ``(B, K)``, for the detections of a batch's ``(B, Q, C + 1)`` logits."""
        probabilities = logits.softmax(-1)[..., :-1]  # drop the no-object class
        scores, labels = probabilities.max(-1)
        queries = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
        return queries, labels, scores

    def ranked_detections(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`class_scores` of a batch's ``(B, Q, C)`` logits, each image's best first (``(B, K)`` each)."""
        queries, labels, scores = self.class_scores(logits)
        # topk rather than a stable sort, which the ONNX exporter cannot translate; only exact ties may order differently.
        scores, order = scores.topk(scores.shape[-1], dim=-1)
        return queries.gather(-1, order), labels.gather(-1, order), scores

    def ranked_boxes(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query of each ranked detection ``(B, K)``, and :meth:`exported_outputs`' boxes, scores and labels."""
        queries, labels, scores = self.ranked_detections(outputs.logits.float())
        cx, cy, w, h = outputs.pred_boxes.float().gather(1, queries[..., None].expand(-1, -1, 4)).unbind(-1)
        return queries, torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1), scores, labels

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``boxes`` ``(B, K, 4)`` as ``[x, y, width, height]`` in fractions of each image's width and height (the
        model's own normalisation: multiply by an image's size, whatever it was resized to), ``scores`` ``(B, K)``,
        best first, and ``labels`` ``(B, K)``, the contiguous class indices."""
        _, boxes, scores, labels = self.ranked_boxes(outputs)
        return boxes, scores, labels

    def format_exported(self, exported: Sequence[torch.Tensor], targets: list[DetectionTarget]) -> list[Detections]:
        boxes, scores, labels = (torch.as_tensor(array) for array in exported)
        detections = []
        for image_boxes, image_scores, image_labels, target in zip(boxes, scores, labels, targets, strict=True):
            height, width = target.size
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            detections.append(Detections(image_id=target.image_id, boxes=image_boxes.float().cpu() * scale, scores=image_scores.float().cpu(),
                                         category_ids=self.label_map.to_category_ids(image_labels.long())))  # fmt: skip
        return detections

    def format_predictions(self, outputs: Any, targets: list[DetectionTarget]) -> list[Detections]:
        # The exported graph's post-processing, run here by PyTorch: one definition for both.
        return self.format_exported(self.exported_outputs(outputs), targets)


class DetrSegmentationAdapter(DetrAdapter):
    """DETR with its mask head (``DetrForSegmentation``): the softmax detections of :class:`DetrAdapter`, each with
    the mask of its query (instance segmentation).

    Training adds each kept instance's mask at the input's size to the labels (the model's loss upsamples its
    stride-4 masks to it: focal and dice loss). Predictions: each query's mask logits upsampled to the image's
    original size and thresholded at 0 (probability 0.5), as the COCO RLE of the detection; the score stays the
    class probability. The input must cover the whole image (``processor_size``: a fixed square), as the
    predicted masks cover the whole input.
    """

    task = "instance_segmentation"

    def adapt_targets(self, targets: list[DetectionTarget], pixel_mask: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        if pixel_mask is None:
            raise ValueError("DetrSegmentationAdapter.adapt_targets needs the batch's pixel_mask (the input size).")
        labels = super().adapt_targets(targets, pixel_mask)
        for label, target, image_mask in zip(labels, targets, pixel_mask, strict=True):
            label["masks"] = masks_at_input(instance_masks(target)[trained_instances(target)], image_mask)
        return labels

    #: Not exported yet: the masks would need their upsampling and RLE outside the graph.
    exported_output_names = ()
    exported_format = ""

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        return OutputAdapter.exported_outputs(self, outputs)

    def format_predictions(self, outputs: Any, targets: list[DetectionTarget]) -> list[Detections]:
        ranked_queries, *exported = self.ranked_boxes(outputs)  # ranked once, for the boxes and the masks
        detections = self.format_exported(exported, targets)
        for detection, queries, pred_masks, target in zip(detections, ranked_queries, outputs.pred_masks, targets, strict=True):
            detection.masks, _, _ = masks_to_rles(pred_masks[queries], target.size)  # the boxes stay the box head's
        return detections


def trained_instances(target: DetectionTarget) -> torch.Tensor:
    """Which instances a DETR-style loss trains on: crowd regions are left out (it cannot ignore them; COCO evaluation
    does) and so are boxes without area (it cannot match them)."""
    return (target.iscrowd == 0) & (target.boxes[:, 2] > 0) & (target.boxes[:, 3] > 0)


class SigmoidDetrAdapter(DetrAdapter):
    """Per-class sigmoid scoring, top-k over queries x classes (Conditional/Deformable/DAB-DETR).

    Args:
        top_k: detections kept per image (COCO evaluation reads at most 100).
    """

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = True, top_k: int = 100) -> None:
        super().__init__(label_map, pass_pixel_mask)
        self.top_k = top_k

    def class_scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_queries, num_classes = logits.shape[-2:]
        flat = logits.sigmoid().flatten(-2)
        scores, indices = flat.topk(min(self.top_k, num_queries * num_classes), dim=-1)  # best first
        return indices // num_classes, indices % num_classes, scores


def _cxcywh_to_abs_xywh(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    cx, cy, w, h = boxes.float().unbind(-1)
    return torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], dim=-1)
