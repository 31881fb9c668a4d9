"""Turns a list of samples into a model batch: pixels from the image processor, labels from the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cvexp.data.coco import DetectionSample

if TYPE_CHECKING:
    from cvexp.adapters.base import OutputAdapter


class DetectionCollator:
    """Batches samples for a Hugging Face detector.

    The image processor resizes, normalises and pads (``pixel_values``, ``pixel_mask``); the
    adapter turns each target into what the model family trains on (``labels``); the original
    targets ride along for evaluation.

    Args:
        image_processor: a Hugging Face image processor of the model.
        adapter: the model family's output adapter.
        image_size: resize so that the longer side is this many pixels (aspect kept); ``None``
            keeps the processor's own size setting.
    """

    def __init__(self, image_processor: Any, adapter: OutputAdapter, image_size: int | None = None) -> None:
        self.image_processor = image_processor
        self.adapter = adapter
        self.size = {"shortest_edge": image_size, "longest_edge": image_size} if image_size else None

    def __call__(self, samples: list[DetectionSample]) -> dict[str, Any]:
        extra = {"size": self.size} if self.size else {}
        encoded = self.image_processor(images=[s.image for s in samples], return_tensors="pt", **extra)
        targets = [s.target for s in samples]
        batch: dict[str, Any] = {
            "pixel_values": encoded["pixel_values"],
            "labels": self.adapter.adapt_targets(targets),
            "targets": targets,
        }
        if "pixel_mask" in encoded:
            batch["pixel_mask"] = encoded["pixel_mask"]
        else:
            batch["pixel_mask"] = torch.ones_like(encoded["pixel_values"][:, 0], dtype=torch.long)
        return batch
