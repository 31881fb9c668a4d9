"""COCO detection metrics with pycocotools semantics, computed by faster-coco-eval.

Wrapped in a ``torchmetrics.Metric`` so that per-process predictions are gathered for free under
distributed training. (torchmetrics' own ``MeanAveragePrecision`` needs torchvision, which has no
CPU build here.)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from pycocotools.cocoeval import Params
from torchmetrics import Metric

from cvexp.adapters.base import Detections
from cvexp.data.coco import Category, DetectionTarget

# The order of COCOeval.stats for bounding boxes.
COCO_STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip


def coco_ground_truth(targets: Sequence[DetectionTarget], categories: Sequence[Category]) -> dict[str, Any]:
    """A COCO ground-truth dict for ``targets``.

    Annotation ids are renumbered from 1: pycocotools treats a matched ground-truth id of 0 as
    "unmatched", so a dataset whose ids start at 0 would score its first box as a miss.
    """
    images, annotations = [], []
    for target in targets:
        height, width = target.size
        images.append({"id": target.image_id, "height": height, "width": width, "file_name": target.file_name})
        for box, category_id, iscrowd, area in zip(
            target.boxes.tolist(), target.category_ids.tolist(), target.iscrowd.tolist(), target.area.tolist(), strict=True
        ):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": target.image_id, "bbox": box,
                 "category_id": int(category_id), "iscrowd": int(iscrowd), "area": float(area)}
            )  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": [{"id": c.id, "name": c.name} for c in categories]}


@dataclass
class CocoEvaluation:
    """The outcome of one COCO bbox evaluation.

    Attributes:
        metrics: the twelve summary numbers and ``ap/<class name>`` (see :func:`evaluate_coco`).
        precision: COCOeval's precision array ``[IoU thresholds, recall points, categories, area
            ranges, max detections]`` (-1 where undefined); ``None`` when there were no results.
        category_ids: the category id of each index of the precision array's category axis.
        iou_thresholds, recall_thresholds: the values of the first two axes.
    """

    metrics: dict[str, float]
    precision: np.ndarray | None
    category_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def run_coco_evaluation(
    ground_truth: dict[str, Any], results: list[dict[str, Any]] | np.ndarray, categories: Sequence[Category]
) -> CocoEvaluation:
    """COCO bbox evaluation of ``results`` against ``ground_truth``, keeping the precision array.

    ``results`` is a COCO results-json list, or an ``(N, 7)`` array of rows
    ``[image_id, x, y, w, h, score, category_id]`` (pycocotools' numpy form, much faster to load).
    """
    if len(results) == 0:
        metrics = {name: 0.0 for name in COCO_STAT_NAMES}
        metrics.update({f"ap/{c.name}": 0.0 for c in categories})
        defaults = Params(iouType="bbox")  # COCOeval's thresholds, for callers that plot them
        return CocoEvaluation(metrics, None, [c.id for c in categories], defaults.iouThrs, defaults.recThrs)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ground_truth)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *_: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=False)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
    precision = np.asarray(evaluator.eval["precision"])
    category_order = [int(c) for c in evaluator.params.catIds]
    for category in categories:
        per_class = precision[:, :, category_order.index(category.id), 0, -1]
        valid = per_class[per_class > -1]
        metrics[f"ap/{category.name}"] = float(valid.mean()) if valid.size else -1.0
    return CocoEvaluation(
        metrics, precision, category_order, np.asarray(evaluator.params.iouThrs), np.asarray(evaluator.params.recThrs)
    )


def evaluate_coco(
    ground_truth: dict[str, Any], results: list[dict[str, Any]] | np.ndarray, categories: Sequence[Category]
) -> dict[str, float]:
    """COCO bbox metrics of ``results`` against ``ground_truth`` (see :func:`run_coco_evaluation`).

    Returns the twelve COCO summary numbers (``map``, ``map_50`` ... ``mar_large``) and ``ap/<class
    name>`` per category (-1 where the category has no ground truth, as pycocotools reports).
    """
    return run_coco_evaluation(ground_truth, results, categories).metrics


class CocoDetectionMetric(Metric):
    """Accumulates detections and ground truth over an epoch; ``compute`` returns COCO metrics.

    Args:
        categories: the dataset's categories (ids and names), for per-class AP by name.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Sequence[Category], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = list(categories)
        # Rows: [image_id, x, y, w, h, score, category_id, occurrence] and [image_id, x, y, w, h,
        # category_id, iscrowd, area, occurrence]; images [image_id, height, width, occurrence].
        # Flat float64 tensors, which sync across processes as lists.
        self.add_state("detection_rows", default=[], dist_reduce_fx="cat")
        self.add_state("target_rows", default=[], dist_reduce_fx="cat")
        self.add_state("image_rows", default=[], dist_reduce_fx="cat")
        self._updates = 0

    def update(self, detections: Sequence[Detections], targets: Sequence[DetectionTarget]) -> None:
        # Under DDP the sampler repeats images so that every rank has as many batches: each image is
        # counted once, from its first occurrence (this process's rank and update count tell them apart).
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        for detection, target in zip(detections, targets, strict=True):
            occurrence = float(rank) * 2**32 + self._updates
            self._updates += 1
            count = len(detection.scores)
            self.detection_rows.append(torch.cat(
                [torch.full((count, 1), float(detection.image_id), dtype=torch.float64), detection.boxes.double(),
                 detection.scores.double()[:, None], detection.category_ids.double()[:, None],
                 torch.full((count, 1), occurrence, dtype=torch.float64)], 1
            ).to(self.device))  # fmt: skip
            count = len(target.boxes)
            self.target_rows.append(torch.cat(
                [torch.full((count, 1), float(target.image_id), dtype=torch.float64), target.boxes.double(),
                 target.category_ids.double()[:, None], target.iscrowd.double()[:, None], target.area.double()[:, None],
                 torch.full((count, 1), occurrence, dtype=torch.float64)], 1
            ).to(self.device))  # fmt: skip
            self.image_rows.append(torch.tensor([[target.image_id, *target.size, occurrence]], dtype=torch.float64, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._updates = 0

    def compute(self) -> dict[str, float]:
        images = _rows(self.image_rows, 4)
        target_rows = _rows(self.target_rows, 9)
        detection_rows = _rows(self.detection_rows, 8)
        # The first occurrence of every image (lowest occurrence key); repeats are dropped.
        first: dict[float, tuple[float, int, int]] = {}
        for image_id, height, width, occurrence in images.tolist():
            if image_id not in first or occurrence < first[image_id][0]:
                first[image_id] = (occurrence, int(height), int(width))
        kept = np.array(sorted(occurrence for occurrence, _, _ in first.values()))
        target_rows = target_rows[np.isin(target_rows[:, 8], kept)]
        detection_rows = detection_rows[np.isin(detection_rows[:, 7], kept)][:, :7]
        targets = []
        for image_id, (occurrence, height, width) in sorted(first.items()):
            rows = target_rows[target_rows[:, 8] == occurrence]
            targets.append(DetectionTarget(
                image_id=int(image_id), boxes=torch.from_numpy(rows[:, 1:5]), category_ids=torch.from_numpy(rows[:, 5]).long(),
                iscrowd=torch.from_numpy(rows[:, 6]).long(), area=torch.from_numpy(rows[:, 7]), size=(height, width),
            ))  # fmt: skip
        return evaluate_coco(coco_ground_truth(targets, self.categories), detection_rows, self.categories)


def _rows(state: list[torch.Tensor] | torch.Tensor, width: int) -> np.ndarray:
    if isinstance(state, torch.Tensor):  # after a distributed sync the list is one tensor
        return state.reshape(-1, width).cpu().numpy()
    if not state:
        return np.zeros((0, width))
    return torch.cat(state).cpu().numpy()
