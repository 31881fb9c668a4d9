"""Turns a list of samples of any task into a model batch: pixels from the image processor, labels from the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cvexp.data.images import UnreadableImage
from cvexp.data.targets import ImageInfo, Sample

if TYPE_CHECKING:
    from cvexp.adapters.base import OutputAdapter


class BatchCollator:
    """Batches samples for a Hugging Face vision model.

    The image processor resizes, normalises and pads (``pixel_values``, ``pixel_mask``); the
    adapter turns the targets into what the model family trains on (``labels``); the original
    targets ride along for evaluation. Images that could not be read (``data.on_invalid=skip``)
    are left out and listed under ``unreadable``; a batch of nothing else has no ``pixel_values``.

    Args:
        image_processor: a Hugging Face image processor of the model.
        adapter: the model family's output adapter.
        image_size: resize so that the longer side is this many pixels (aspect kept), or to this
            square for processors that resize to a fixed shape (:func:`processor_size`); ``None``
            keeps the processor's own size setting.
    """

    def __init__(self, image_processor: Any, adapter: OutputAdapter, image_size: int | None = None) -> None:
        self.image_processor = image_processor
        self.adapter = adapter
        self.size = processor_size(image_processor, image_size) if image_size else None

    def __call__(self, samples: list[Sample | UnreadableImage]) -> dict[str, Any]:
        unreadable = [s for s in samples if isinstance(s, UnreadableImage)]
        samples = [s for s in samples if not isinstance(s, UnreadableImage)]
        if not samples:
            return {"targets": [], "labels": [], "unreadable": unreadable}
        extra = {"size": self.size} if self.size else {}
        encoded = self.image_processor(images=[s.image for s in samples], return_tensors="pt", **extra)
        targets = [s.target for s in samples]
        # Processors that never pad (ViT, SegFormer, RT-DETR) give no mask: every pixel is image.
        pixel_mask = encoded["pixel_mask"] if "pixel_mask" in encoded else torch.ones_like(encoded["pixel_values"][:, 0], dtype=torch.long)
        return {
            "pixel_values": encoded["pixel_values"],
            "pixel_mask": pixel_mask,
            "labels": None if any(isinstance(t, ImageInfo) for t in targets) else self.adapter.adapt_targets(targets, pixel_mask),
            "targets": targets,
            "unreadable": unreadable,
        }


def processor_size(image_processor: Any, image_size: int) -> dict[str, int]:
    """The ``size`` with which ``image_processor`` resizes to ``image_size``, in the processor's own kind of resize.

    Most processors keep the aspect ratio (``shortest_edge``/``longest_edge``: DETR, Deformable
    DETR, YOLOS): the longer side becomes ``image_size`` and the batch is padded, ``pixel_mask``
    marking the padding. A processor whose own size is a fixed ``height`` x ``width`` (RT-DETR,
    RT-DETRv2, D-FINE) stretches every image to ``image_size`` x ``image_size``, as those models are
    trained: they take no pixel mask and predict boxes relative to the whole input, which is then
    the whole image (padding would shift every box the adapter normalises to the image).
    """
    size = getattr(image_processor, "size", None)
    field = size.get if isinstance(size, dict) else lambda name: getattr(size, name, None)
    if field("height") and field("width") and not field("shortest_edge"):
        return {"height": image_size, "width": image_size}
    return {"shortest_edge": image_size, "longest_edge": image_size}
