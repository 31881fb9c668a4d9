"""Image classification metrics: accuracy, macro and per-class precision / recall / F1, the confusion matrix.

A ``torchmetrics.Metric`` whose state is one row per image, gathered across processes and
de-duplicated by image like :class:`cvexp.evaluation.coco_metric.CocoDetectionMetric` (under DDP the
sampler repeats images to even out the ranks; each image counts once). The numbers themselves come
from torchmetrics' functional multiclass metrics on the de-duplicated rows.

Conventions (torchmetrics'):

- ``accuracy`` is the fraction of images whose predicted class is right (micro average).
- ``macro_*`` average the per-class values over the classes that occur in the ground truth or the
  predictions (a class with no true positive, false positive or false negative is left out of the
  mean); this is also what scikit-learn's macro average does without an explicit ``labels`` list.
- A per-class value whose denominator is zero (a class never predicted has no precision, a class
  absent from the ground truth no recall) is 0, torchmetrics' ``zero_division=0``.
- With no image at all, every number is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from cvexp.data.labels import Category
from cvexp.evaluation.coco_metric import first_occurrences, gathered_rows, gathered_states, occurrence_key, process_rank

if TYPE_CHECKING:
    from cvexp.adapters.predictions import ClassScores
    from cvexp.data.targets import ClassificationTarget

# Columns of a state row.
_IMAGE_ID, _TRUTH, _PREDICTED, _OCCURRENCE = range(4)


class ClassificationMetric(Metric):
    """Accumulates predicted and true classes over an epoch; ``compute`` returns classification metrics.

    Args:
        categories: the dataset's categories; their order fixes the rows and columns of
            :meth:`confusion_matrix`, their names the per-class keys.

    ``compute`` returns ``accuracy``, ``macro_f1``, ``macro_precision``, ``macro_recall`` and, per
    class, ``precision/<name>``, ``recall/<name>``, ``f1/<name>`` (conventions in the module docstring).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Sequence[Category], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = list(categories)
        if not self.categories:
            raise ValueError("ClassificationMetric needs at least one category")
        self._index_of_id = {category.id: index for index, category in enumerate(self.categories)}
        # Rows [image_id, true class index, predicted class index, occurrence key], float64 (exact
        # for these integers), which sync across processes as a list.
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        # Not reset with the states (unlike the COCO metric's): a counter that only grows keeps
        # occurrence keys unique even through torchmetrics' forward(), which resets internally.
        self._updates = 0

    def update(self, predictions: Sequence[ClassScores], targets: Sequence[ClassificationTarget]) -> None:
        rank = process_rank()
        rows = []
        for prediction, target in zip(predictions, targets, strict=True):
            if prediction.image_id != target.image_id:
                raise ValueError(
                    f"a prediction for image {prediction.image_id} is paired with the target of image {target.image_id}"
                )
            truth = self._index(target.category_id, f"image {target.image_id}'s target")
            predicted = self._index(prediction.category_id, f"the prediction for image {prediction.image_id}")
            rows.append([float(target.image_id), truth, predicted, occurrence_key(rank, self._updates)])
            self._updates += 1
        self.rows.append(torch.tensor(rows, dtype=torch.float64, device=self.device).reshape(-1, 4))

    def _index(self, category_id: int, what: str) -> int:
        try:
            return self._index_of_id[int(category_id)]
        except KeyError:
            raise ValueError(f"{what} has category id {category_id}, which is none of the metric's categories "
                             f"{sorted(self._index_of_id)}") from None  # fmt: skip

    def _labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted, true) class indices of each image's first occurrence; repeats are dropped."""
        rows = gathered_rows(self.rows, 4)
        rows = rows[first_occurrences(rows[:, _IMAGE_ID], rows[:, _OCCURRENCE])]
        return torch.from_numpy(rows[:, _PREDICTED]).long(), torch.from_numpy(rows[:, _TRUTH]).long()

    def compute(self) -> dict[str, float]:
        predicted, truth = self._labels()
        names = [category.name for category in self.categories]
        if len(truth) == 0:  # torchmetrics cannot reshape an empty batch
            return {name: 0.0 for name in _keys(names)}
        num_classes = len(self.categories)
        metrics = {"accuracy": float(multiclass_accuracy(predicted, truth, num_classes, average="micro"))}
        for key, function in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
            metrics[f"macro_{key}"] = float(function(predicted, truth, num_classes, average="macro"))
            for name, value in zip(names, function(predicted, truth, num_classes, average=None).tolist(), strict=True):
                metrics[f"{key}/{name}"] = float(value)
        return metrics

    def confusion_matrix(self) -> torch.Tensor:
        """The ``(K, K)`` int64 counts of the de-duplicated images: rows the true class, columns the predicted one, in ``categories`` order.

        Gathers the states of all processes first, as ``compute`` does (every process gets the whole matrix).
        """
        with gathered_states(self):
            predicted, truth = self._labels()
        num_classes = len(self.categories)
        if len(truth) == 0:
            return torch.zeros(num_classes, num_classes, dtype=torch.int64)
        return multiclass_confusion_matrix(predicted, truth, num_classes).long()


def _keys(names: list[str]) -> list[str]:
    keys = ["accuracy", "macro_precision", "macro_recall", "macro_f1"]
    return keys + [f"{key}/{name}" for key in ("precision", "recall", "f1") for name in names]


__all__ = ["ClassificationMetric"]
