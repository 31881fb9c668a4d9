"""From a batch of decoded images to the model's ``pixel_values`` and ``pixel_mask``: the ``pixels`` config group.

Both options feed a model exactly what its Hugging Face image processor would (the processor is
the one definition of a model's input; ``tests/test_pixels.py`` checks every model option). Each
works in two halves: calling it batches the images (in a DataLoader worker), and
:meth:`~ProcessorPixels.model_input` makes the model's float input of that batch on the model's
device (the training module and the predictor call it).

- :class:`TorchPixels` (``pixels=torch``, the default) lets the processor resize each image (its own
  resampling, on uint8) and pads the batch as uint8; on the model's device it rescales and
  normalises the whole batch at once. The processor would do those per image in float64 numpy
  and copy the list into a tensor; a uint8 batch is also a quarter of the bytes that go from a
  worker to the training process (and to a GPU). docs/benchmarks.md has the measurements.
- :class:`ProcessorPixels` (``pixels=processor``) leaves everything to the processor; its batches
  hold the model's input already.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


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


class ProcessorPixels:
    """The image processor resizes, rescales, normalises and pads, image by image (``pixels=processor``).

    Args:
        image_processor: a Hugging Face image processor of the model.
        image_size: resize to this size, in the processor's kind of resize (:func:`processor_size`);
            ``None`` keeps the processor's own size setting.
        channels_last: give ``pixel_values`` the channels-last memory layout (the model's, when it
            has been converted: ``channels_last=true`` in the training config).
    """

    def __init__(self, image_processor: Any, image_size: int | None = None, channels_last: bool = False) -> None:
        self.image_processor = image_processor
        self.size = processor_size(image_processor, image_size) if image_size else None
        self.channels_last = channels_last

    def _processor_kwargs(self) -> dict[str, Any]:
        return {"size": self.size} if self.size else {}

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` (B, 3, H, W), the model's input, and ``pixel_mask`` (B, H, W), 1 on image and 0 on padding."""
        encoded = self.image_processor(images=list(images), return_tensors="pt", **self._processor_kwargs())
        values = encoded["pixel_values"]
        # Processors that never pad (ViT, SegFormer, RT-DETR) give no mask: every pixel is image.
        mask = encoded["pixel_mask"] if "pixel_mask" in encoded else torch.ones_like(values[:, 0], dtype=torch.long)
        return (values.contiguous(memory_format=torch.channels_last) if self.channels_last else values), mask

    def model_input(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """The model's ``pixel_values`` from a batch's (on any device): the processor's are ready as they are."""
        return pixel_values


class TorchPixels(ProcessorPixels):
    """The image processor resizes each image; torch pads the batch as uint8, then rescales and normalises it at once (``pixels=torch``).

    Padding is at the bottom and right, to the processor's ``pad_size`` when it pads to one and to
    the batch's largest image otherwise; padded pixels are 0 after normalisation, as the processor
    pads them. Arguments as :class:`ProcessorPixels`.
    """

    def __init__(self, image_processor: Any, image_size: int | None = None, channels_last: bool = False) -> None:
        super().__init__(image_processor, image_size, channels_last)
        rescale = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", False) else 1.0
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if getattr(image_processor, "do_normalize", False):
            mean, std = _per_channel(image_processor.image_mean), _per_channel(image_processor.image_std)
        # (x * rescale - mean) / std as one fused multiply-add per value: x * scale - shift
        self.scale = torch.tensor([rescale / s for s in std], dtype=torch.float32)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
        pad_size = getattr(image_processor, "pad_size", None) if getattr(image_processor, "do_pad", False) else None
        self.pad_size = (int(pad_size["height"]), int(pad_size["width"])) if pad_size else None

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` (B, 3, H, W) uint8, resized and padded with 0, and ``pixel_mask`` (B, H, W) bool, true on image."""
        resized = self.image_processor(images=list(images), do_rescale=False, do_normalize=False, do_pad=False,
                                       return_tensors=None, **self._processor_kwargs())  # fmt: skip
        # A PIL processor hands back (3, H, W) views of (H, W, 3) arrays: as (H, W, 3) they need no copy. A
        # torchvision ("fast") one, which AutoImageProcessor loads where torchvision is installed, hands back tensors.
        hwc = [torch.as_tensor(image).permute(1, 2, 0) for image in resized["pixel_values"]]
        height, width = self.pad_size or (max(image.shape[0] for image in hwc), max(image.shape[1] for image in hwc))
        values = _batch_tensor((len(hwc), height, width, 3), torch.uint8)
        mask = _batch_tensor((len(hwc), height, width), torch.bool)
        for index, image in enumerate(hwc):
            rows, columns, _ = image.shape
            values[index, :rows, :columns] = image
            values[index, rows:] = 0
            values[index, :rows, columns:] = 0
            mask[index] = False
            mask[index, :rows, :columns] = True
        if "pixel_mask" in resized:  # a processor that pads whatever it is told (Mask2Former) says where its images are
            mask.copy_(torch.as_tensor(np.stack(resized["pixel_mask"])))
        values = values.permute(0, 3, 1, 2)  # (B, 3, H, W) in the channels-last layout
        if not self.channels_last:
            values = _batch_tensor(tuple(values.shape), torch.uint8).copy_(values)
        return values, mask

    def model_input(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Rescaled and normalised float32 ``pixel_values``, 0 on padding, in the layout (and on the device) they came in."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        scale, shift = self.scale.to(pixel_values.device), self.shift.to(pixel_values.device)
        batch, channels, height, width = pixel_values.shape
        padded = not bool(pixel_mask.all())  # often nothing is: skip a pass over the batch
        if pixel_values.is_contiguous() or not pixel_values.is_contiguous(memory_format=torch.channels_last):
            values = torch.addcmul(-shift.view(channels, 1, 1), pixel_values, scale.view(channels, 1, 1))
            return values.mul_(pixel_mask[:, None]) if padded else values
        # Channels-last: along each image row the channels alternate, so the constants do too (a row of
        # W*3 values is the loop torch vectorises; a (3, 1, 1) broadcast would make it a loop over 3).
        rows = pixel_values.permute(0, 2, 3, 1).reshape(batch, height, width * channels)
        values = torch.addcmul(-shift.repeat(width), rows, scale.repeat(width)).view(batch, height, width, channels)
        if padded:
            values.mul_(pixel_mask[..., None])
        return values.permute(0, 3, 1, 2)


class MultiScalePixels:
    """Multi-scale training: each batch resized to a size drawn from ``sizes`` (as the RT-DETR, D-FINE, DEIM and
    RF-DETR recipes train), in the processor's kind of resize; :meth:`model_input` is ``pixels``' own.

    Evaluation keeps ``pixels`` (one size): only the training loader batches with this. The size is a function
    of the batch's pixels (:meth:`size_of`), so that a resumed run repeats it.

    Args:
        pixels: the run's pixels (:class:`TorchPixels` or :class:`ProcessorPixels`), at ``data.image_size``.
        sizes: the training sizes (the longer side, or the square's side for fixed-size processors).
    """

    def __init__(self, pixels: ProcessorPixels, sizes: Sequence[int]) -> None:
        if not sizes:
            raise ValueError("multi_scale: no training sizes")
        self.pixels = pixels
        self.sizes = sorted(set(int(size) for size in sizes))
        self._at_size = {size: self._sized(size) for size in self.sizes}

    @classmethod
    def around(cls, pixels: ProcessorPixels, image_size: int, scales: Sequence[float], multiple_of: int = 32) -> MultiScalePixels:
        """The sizes ``scale * image_size`` rounded to a multiple of ``multiple_of`` (what patch sizes and windows divide)."""
        return cls(pixels, [max(multiple_of, round(scale * image_size / multiple_of) * multiple_of) for scale in scales])

    def _sized(self, size: int) -> ProcessorPixels:
        sized = copy.copy(self.pixels)
        sized.size = processor_size(self.pixels.image_processor, size)
        return sized

    @property
    def channels_last(self) -> bool:
        return self.pixels.channels_last

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._at_size[self.size_of(images)](images)

    def size_of(self, images: Sequence[np.ndarray]) -> int:
        """The batch's training size: a hash of its (augmented) pixels picks it. Those come from ``(seed, epoch, index)``
        alone (:mod:`cvexp.data.sampling`), so a run resumed mid-epoch trains each batch at the size the uninterrupted
        run did; Python's ``random`` would restart its sequence at the resume."""
        digest = 0
        for image in images:  # every 8th pixel of every image: cheap, and batches that differ anywhere differ here too
            digest = zlib.crc32(np.ascontiguousarray(image[::8, ::8]).tobytes(), digest)
        return self.sizes[digest % len(self.sizes)]

    def model_input(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        return self.pixels.model_input(pixel_values, pixel_mask)


def _per_channel(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    return tuple(float(value) for value in values)  # type: ignore[return-value]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, in shared memory when made in a DataLoader worker (as ``default_collate`` makes its
    batches): the batch then reaches the training process without another copy."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


__all__ = ["ProcessorPixels", "TorchPixels", "processor_size"]
