"""Instance segmentation by mask classification: Mask2Former-style models (``Mask2FormerForUniversalSegmentation``,
``MaskFormerForInstanceSegmentation``, ``OneFormer``) that give every query a class distribution (with a trailing
"no object" class) and a mask.

Training: each image's instances become a binary mask at the model input's size (nearest resize)
and a contiguous class label, passed as the model's ``mask_labels`` and ``class_labels``.
Predictions follow the Hugging Face ``post_process_instance_segmentation``: the top-k
(query, class) pairs by class probability, each scored by its class probability times the mean
mask probability inside its binary mask. The mask logits go straight to the image's original size
(bilinear) and are thresholded at 0 there, where Hugging Face first resizes them to a fixed 384 px
grid: the masks and their scores are the image's own. Each detection carries its mask as a COCO
RLE and the box around it.
"""

from __future__ import annotations

from typing import Any

import torch

from cvexp.adapters.base import AdaptedOutput, OutputAdapter
from cvexp.adapters.predictions import Detections, masks_at_input, masks_to_rles
from cvexp.data.labels import LabelMap
from cvexp.data.targets import DetectionTarget


class MaskClassificationAdapter(OutputAdapter):
    """Instances as (class, mask) pairs, one per query.

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: whether the forward takes ``pixel_mask`` (Mask2Former does; the input is
            stretched to a fixed square, so it marks every pixel).
        top_k: detections kept per image (COCO evaluation reads at most 100).
    """

    task = "instance_segmentation"

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = True, top_k: int = 100) -> None:
        super().__init__(label_map, pass_pixel_mask)
        self.top_k = top_k

    def model_inputs(self, batch: dict[str, Any], with_labels: bool = True) -> dict[str, Any]:
        """The forward's ``pixel_values`` (and ``pixel_mask``), with ``mask_labels`` and ``class_labels`` when training."""
        inputs = super().model_inputs(batch, with_labels=False)
        if with_labels:
            inputs.update(batch["labels"])
        return inputs

    def adapt_targets(self, targets: list[DetectionTarget], pixel_mask: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """``mask_labels``: per image an ``(N, H, W)`` float mask per instance at the input's size (padding 0);
        ``class_labels``: their contiguous labels. Crowd regions are left out, as the set-matching loss
        cannot ignore them (COCO evaluation does)."""
        if pixel_mask is None:
            raise ValueError("MaskClassificationAdapter.adapt_targets needs the batch's pixel_mask (the input size).")
        mask_labels, class_labels = [], []
        for target, image_mask in zip(targets, pixel_mask, strict=True):
            keep = target.iscrowd == 0
            mask_labels.append(masks_at_input(instance_masks(target)[keep], image_mask))
            class_labels.append(self.label_map.to_contiguous(target.category_ids[keep]))
        return {"mask_labels": mask_labels, "class_labels": class_labels}

    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        # The model returns only the weighted sum of its class, mask (sigmoid BCE) and dice losses.
        return AdaptedOutput(outputs.loss, {"loss_mask_classification": outputs.loss.detach()})

    exported_output_names = ("scores", "labels", "masks")
    exported_format = "ranked_masks"

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-k (query, class) pairs of each image by class probability: ``scores`` ``(B, K)`` (before the mask
        quality), ``labels`` ``(B, K)`` contiguous, and the ``masks`` ``(B, K, h, w)`` logits of their queries over the
        whole input. Their upsampling to each image's own size follows the graph (:meth:`format_exported`)."""
        probabilities = outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # drop the no-object class
        num_classes = probabilities.shape[-1]
        scores, flat = probabilities.flatten(1).topk(min(self.top_k, probabilities[0].numel()), dim=-1)
        queries = flat // num_classes
        mask_logits = outputs.masks_queries_logits.float()
        masks = mask_logits.gather(1, queries[..., None, None].expand(-1, -1, *mask_logits.shape[-2:]))
        return scores, flat % num_classes, masks

    def format_exported(self, exported: Any, targets: list[Any]) -> list[Detections]:
        """Each image's masks upsampled to its size and thresholded at 0 (:func:`masks_to_rles`), scored by class
        probability x mask quality, as Hugging Face's post-processing scores, best first."""
        predictions = []
        for scores, labels, mask_logits, target in zip(*(torch.as_tensor(array) for array in exported), targets, strict=True):
            masks, boxes, quality = masks_to_rles(mask_logits, target.size)
            scores = scores.float().cpu() * quality
            order = scores.argsort(descending=True).tolist()
            predictions.append(Detections(target.image_id, boxes[order], scores[order], self.label_map.to_category_ids(labels[order].cpu()),
                                          [masks[i] for i in order]))  # fmt: skip
        return predictions

    def format_predictions(self, outputs: Any, targets: list[Any]) -> list[Detections]:
        # The exported graph's post-processing, run here by PyTorch: one definition for both.
        return self.format_exported(self.exported_outputs(outputs), targets)


def instance_masks(target: DetectionTarget) -> torch.Tensor:
    """The target's ``(N, H, W)`` instance masks, or an error that says how to read them."""
    if target.masks is None:
        raise ValueError(f"image {target.image_id} ({target.file_name or 'no file name'}) has no instance masks: instance "
                         "segmentation reads its data with masks (data.dataset.with_masks=true).")  # fmt: skip
    return target.masks
