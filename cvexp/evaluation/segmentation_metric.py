"""Semantic segmentation metrics: mean IoU, per-class IoU, pixel accuracy and mean class accuracy.

Computed from one ``K x K`` confusion matrix summed over the dataset's pixels (rows the true class,
columns the predicted one), the convention of Hugging Face ``evaluate``'s ``mean_iou`` and of
mmsegmentation:

- ``iou/<class>`` = intersection / union over all pixels of all images (not a mean of per-image
  IoUs). A class with neither ground-truth nor predicted pixels has 0/0 = NaN: it is reported as
  NaN and left out of ``miou``. A class that is predicted but absent from the ground truth has IoU
  0 and counts; so does a class in the ground truth that is never predicted.
- ``miou`` = the mean of the non-NaN per-class IoUs (``np.nanmean``); NaN if every class is.
- ``pixel_accuracy`` = correctly classified pixels / counted pixels (HF's ``overall_accuracy``).
- ``mean_accuracy`` = the mean over classes present in the ground truth of their recall
  (intersection / ground-truth pixels); classes absent from the ground truth are NaN and left out.
- Pixels whose ground truth is ``ignore_index`` (255, :data:`cvexp.data.targets.IGNORE_INDEX`)
  count nowhere, whatever is predicted there.

Masks hold the dataset's category ids; they are mapped to contiguous indices in the order of the
metric's ``categories``. Under DDP each image counts once, like the other task metrics: every
image's own confusion matrix is kept (sparsely: only its non-zero cells, a few per class present)
under its occurrence key, and only the first occurrence of each image id is summed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from cvexp.data.labels import Category
from cvexp.data.targets import IGNORE_INDEX
from cvexp.evaluation.coco_metric import first_occurrences, gathered_rows, gathered_states, occurrence_key, process_rank

if TYPE_CHECKING:
    from cvexp.adapters.predictions import SegmentationMap
    from cvexp.data.targets import SegmentationTarget

# Contiguous-index values for pixels that are not a class: ignored, or a value no category has.
_IGNORED = -1
_UNKNOWN = -2


def segmentation_scores(matrix: np.ndarray | torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """``miou``, ``iou/<name>``, ``pixel_accuracy`` and ``mean_accuracy`` of a ``K x K`` confusion matrix (rows the truth).

    The conventions are the module docstring's (HF ``evaluate`` ``mean_iou`` / mmseg).
    """
    matrix = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    truth_area = matrix.sum(axis=1)
    predicted_area = matrix.sum(axis=0)
    union = truth_area + predicted_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is the NaN of an absent class
        iou = intersection / union
        accuracy = intersection / truth_area
    total = matrix.sum()
    metrics = {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(intersection.sum() / total) if total else math.nan,
        "mean_accuracy": _nanmean(accuracy),
    }
    metrics.update({f"iou/{name}": float(value) for name, value in zip(names, iou, strict=True)})
    return metrics


def _nanmean(values: np.ndarray) -> float:
    """``np.nanmean`` without its warning when every value is NaN (then NaN)."""
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


class SemanticSegmentationMetric(Metric):
    """Accumulates a per-pixel confusion matrix over an epoch; ``compute`` returns mIoU and friends.

    Args:
        categories: the dataset's categories: ids are the mask values, names the per-class keys;
            their order fixes the rows and columns of :meth:`confusion_matrix`.
        ignore_index: the ground-truth mask value that counts nowhere (no category may have it).

    ``update`` takes predictions and targets of the same images, masks at the same (original) size.
    A ground-truth value that is neither a category id nor ``ignore_index`` is an error (a wrong
    category list would otherwise silently drop pixels), as is such a predicted value on a counted pixel.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Sequence[Category], ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = list(categories)
        self.ignore_index = int(ignore_index)
        ids = [category.id for category in self.categories]
        if not ids:
            raise ValueError("SemanticSegmentationMetric needs at least one category")
        if min(ids) < 0 or self.ignore_index in ids or len(set(ids)) != len(ids):
            raise ValueError(f"category ids {ids} must be distinct, non-negative and other than ignore_index={self.ignore_index}")
        # Category id -> contiguous index, as a lookup table over mask values.
        self._lookup = torch.full((max(ids) + 1,), _UNKNOWN, dtype=torch.int64)
        self._lookup[torch.tensor(ids)] = torch.arange(len(ids))
        # images: [image_id, occurrence]; cells: [occurrence, truth * K + predicted, pixel count],
        # the non-zero cells of each image's confusion matrix. float64 is exact for these integers.
        self.add_state("image_rows", default=[], dist_reduce_fx="cat")
        self.add_state("cell_rows", default=[], dist_reduce_fx="cat")
        # Not reset with the states: a counter that only grows keeps occurrence keys unique even
        # through torchmetrics' forward(), which resets internally; cells are selected by key.
        self._updates = 0

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def update(self, predictions: Sequence[SegmentationMap], targets: Sequence[SegmentationTarget]) -> None:
        # Compute (and so check) every image first, so that a bad batch leaves no half-recorded state.
        matrices = [self._image_matrix(prediction, target) for prediction, target in zip(predictions, targets, strict=True)]
        rank = process_rank()
        for target, matrix in zip(targets, matrices, strict=True):
            occurrence = occurrence_key(rank, self._updates)
            self._updates += 1
            cells = torch.nonzero(matrix.flatten()).flatten()
            self.image_rows.append(torch.tensor([[float(target.image_id), occurrence]], dtype=torch.float64, device=self.device))
            self.cell_rows.append(torch.stack(
                [torch.full((len(cells),), occurrence, dtype=torch.float64), cells.double().cpu(), matrix.flatten()[cells].double().cpu()], 1
            ).to(self.device))  # fmt: skip

    def _image_matrix(self, prediction: SegmentationMap, target: SegmentationTarget) -> torch.Tensor:
        """One image's ``K x K`` confusion matrix (rows the truth), by torchmetrics, ignored pixels left out."""
        where = f"image {target.image_id}"
        if prediction.image_id != target.image_id:
            raise ValueError(f"a prediction for image {prediction.image_id} is paired with the target of image {target.image_id}")
        if tuple(prediction.mask.shape) != tuple(target.mask.shape):
            raise ValueError(f"{where}: predicted mask {tuple(prediction.mask.shape)} and ground truth {tuple(target.mask.shape)} "
                             "differ in size; predictions must be at the image's original size")  # fmt: skip
        predicted_mask = prediction.mask.to(target.mask.device)
        truth = self._indices(target.mask)
        predicted = self._indices(predicted_mask)
        if (truth == _UNKNOWN).any():
            raise ValueError(f"{where}: ground-truth mask values {self._values(target.mask, truth == _UNKNOWN)} are neither a "
                             f"category id {[c.id for c in self.categories]} nor ignore_index={self.ignore_index}")  # fmt: skip
        counted = truth != _IGNORED
        if (predicted[counted] < 0).any():
            raise ValueError(f"{where}: predicted mask values {self._values(predicted_mask, counted & (predicted < 0))} "
                             f"are not category ids {[c.id for c in self.categories]}")  # fmt: skip
        return multiclass_confusion_matrix(
            predicted.flatten(), truth.flatten(), self.num_classes, ignore_index=_IGNORED, validate_args=False
        ).long()

    def _indices(self, mask: torch.Tensor) -> torch.Tensor:
        """Contiguous class indices of a mask of category ids; ``_IGNORED`` where it is ``ignore_index``, ``_UNKNOWN`` elsewhere."""
        mask = mask.long()
        lookup = self._lookup.to(mask.device)
        inside = (mask >= 0) & (mask < len(lookup))
        indices = torch.full_like(mask, _UNKNOWN)
        indices[inside] = lookup[mask[inside]]
        indices[mask == self.ignore_index] = _IGNORED
        return indices

    @staticmethod
    def _values(mask: torch.Tensor, selected: torch.Tensor) -> list[int]:
        """The distinct mask values at ``selected`` pixels (the first ten), for error messages."""
        return torch.unique(mask[selected]).tolist()[:10]

    def confusion_matrix(self) -> torch.Tensor:
        """The ``(K, K)`` int64 pixel counts of the de-duplicated images: rows the true class, columns the predicted one, in ``categories`` order.

        Gathers the states of all processes first, as ``compute`` does (every process gets the whole matrix).
        """
        with gathered_states(self):
            return self._confusion_matrix()

    def _confusion_matrix(self) -> torch.Tensor:
        images = gathered_rows(self.image_rows, 2)
        cells = gathered_rows(self.cell_rows, 3)
        kept = images[first_occurrences(images[:, 0], images[:, 1]), 1]
        cells = cells[np.isin(cells[:, 0], kept)]
        size = self.num_classes**2
        counts = np.bincount(cells[:, 1].astype(np.int64), weights=cells[:, 2], minlength=size)
        return torch.from_numpy(np.rint(counts).astype(np.int64).reshape(self.num_classes, self.num_classes))

    def compute(self) -> dict[str, float]:
        return segmentation_scores(self._confusion_matrix(), [category.name for category in self.categories])


__all__ = ["SemanticSegmentationMetric", "segmentation_scores"]
