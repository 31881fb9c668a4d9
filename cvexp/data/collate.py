"""Turns a list of samples of any task into a model batch: pixels from the ``pixels`` option, labels from the adapter."""

from __future__ import annotations

import io
import pickle
from typing import TYPE_CHECKING, Any

import torch

from cvexp.data.images import UnreadableImage
from cvexp.data.targets import ImageInfo, Sample

if TYPE_CHECKING:
    from cvexp.adapters.base import OutputAdapter
    from cvexp.data.pixels import ProcessorPixels


class BatchCollator:
    """Batches samples for a Hugging Face vision model.

    ``pixels`` turns the images into ``pixel_values`` and ``pixel_mask`` as the model's image
    processor would (:mod:`cvexp.data.pixels`); the adapter turns the targets into what the model
    family trains on (``labels``); the original targets ride along for evaluation. Images that could
    not be read (``data.on_invalid=skip``) are left out and listed under ``unreadable``; a batch of
    nothing else has no ``pixel_values``.

    Args:
        pixels: a :class:`~cvexp.data.pixels.TorchPixels` or :class:`~cvexp.data.pixels.ProcessorPixels`.
        adapter: the model family's output adapter.
    """

    def __init__(self, pixels: ProcessorPixels, adapter: OutputAdapter) -> None:
        self.pixels = pixels
        self.adapter = adapter

    def __call__(self, samples: list[Sample | UnreadableImage]) -> dict[str, Any]:
        unreadable = [s for s in samples if isinstance(s, UnreadableImage)]
        samples = [s for s in samples if not isinstance(s, UnreadableImage)]
        if not samples:
            return {"targets": [], "labels": [], "unreadable": unreadable}
        pixel_values, pixel_mask = self.pixels([s.image for s in samples])
        targets = [s.target for s in samples]
        labels = None if any(isinstance(t, ImageInfo) for t in targets) else self.adapter.adapt_targets(targets, pixel_mask)
        return {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "labels": _inline_in_worker(labels),
            "targets": _inline_in_worker(targets),
            "unreadable": unreadable,
        }


#: Tensors up to this many bytes travel from a DataLoader worker inside the pickled batch; larger ones in shared memory.
INLINE_TENSOR_BYTES = 1 << 16


class _Inline:
    """Pickles ``content`` with its small tensors inside the pickle (numpy bytes) instead of a shared-memory segment each.

    A DataLoader worker hands every tensor of a batch to the training process as a shared-memory
    segment of its own, whose file descriptor the receiver maps and later unmaps: for a batch's
    dozens of target tensors of a few bytes each that cost 13 ms per batch of 8 images in the
    training process (docs/benchmarks.md). Only used in workers; unpickled, it is ``content`` again.
    """

    def __init__(self, content: Any) -> None:
        self.content = content

    def __reduce__(self) -> tuple[Any, ...]:
        large: list[torch.Tensor] = []
        buffer = io.BytesIO()
        _InlinePickler(buffer, large).dump(self.content)
        return _restore, (buffer.getvalue(), large)  # the large tensors go the usual way: shared memory


class _InlinePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, large: list[torch.Tensor]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.large = large

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, torch.Tensor) and (obj.numel() * obj.element_size() > INLINE_TENSOR_BYTES or obj.dtype == torch.bfloat16):
            self.large.append(obj)
            return len(self.large) - 1
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


class _InlineUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, large: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.large = large

    def persistent_load(self, pid: Any) -> torch.Tensor:
        return self.large[pid]


def _restore(payload: bytes, large: list[torch.Tensor]) -> Any:
    return _InlineUnpickler(io.BytesIO(payload), large).load()


def _inline_in_worker(content: Any) -> Any:
    """``content``, wrapped to travel inline when this is a DataLoader worker (where it will be pickled)."""
    return _Inline(content) if torch.utils.data.get_worker_info() is not None else content
