"""Object detection: boxes scored with COCO mAP (pycocotools semantics), a COCO results json, PR curves."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.adapters.predictions import Detections
from cvexp.data.labels import Category
from cvexp.deployment.responses import detection_records
from cvexp.evaluation.coco_metric import CocoDetectionMetric
from cvexp.tasks.base import EvaluationReport, PredictionFeatures, Task


class DetectionTask(Task):
    """Boxes and classes; ``val/map`` (COCO mAP@[.5:.95]) is what checkpoints and sweeps follow by default.

    Report options (conf/report/): ``score_threshold`` and ``iou_threshold`` of the confusion matrix,
    ``render_score_threshold`` of the sample images, ``num_samples``.
    """

    name = "detection"
    headline = ("map_50", "map", "mar_100")
    results_file = "coco_results.json"

    def metric(self, categories: Sequence[Category]) -> CocoDetectionMetric:
        return CocoDetectionMetric(categories)

    def results(self, predictions: Iterable[Detections], file_names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
        from cvexp.evaluation.evaluator import coco_results

        return coco_results(predictions, dict(file_names) if file_names else None)

    def write_report(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category], output_dir: Path,
                     load_image: Callable[[int], np.ndarray], options: Mapping[str, Any]) -> EvaluationReport:  # fmt: skip
        from cvexp.evaluation.evaluator import write_report

        keys = ("score_threshold", "iou_threshold", "render_score_threshold", "num_samples")
        return write_report(predictions, categories, output_dir, load_image, **{key: options[key] for key in keys if key in options})

    def response(self, prediction: Detections, category_names: Mapping[int, str], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The detections scoring at least ``params["score_threshold"]``, best first: ``bbox`` (absolute ``[x, y, w, h]`` in
        the original image's pixels), ``score``, ``category_id`` (the dataset's id) and ``category_name``."""
        return detection_records(prediction.boxes.numpy(), prediction.scores.numpy(), prediction.category_ids.numpy(), category_names,
                                 float(params["score_threshold"]))  # fmt: skip

    def render(self, image: np.ndarray, prediction: Detections, category_names: Mapping[int, str], score_threshold: float, path: Path) -> Path:
        from cvexp.evaluation.plots import render_detections

        return render_detections(image, prediction, category_names, score_threshold, path)

    def prediction_features(self, prediction: Detections, image_shape: tuple[int, int], category_names: Mapping[int, str],
                            score_threshold: float) -> PredictionFeatures:  # fmt: skip
        """``max_score`` and ``detections_per_image`` per image; ``score`` and ``box_area`` (fraction of the image) per
        detection scoring at least ``score_threshold``; their classes."""
        keep = prediction.scores >= score_threshold
        image_area = float(image_shape[0] * image_shape[1])
        return PredictionFeatures(
            per_image={"max_score": float(prediction.scores.max()) if len(prediction.scores) else 0.0, "detections_per_image": float(keep.sum())},
            per_item={"score": prediction.scores[keep].tolist(),
                      "box_area": (prediction.boxes[keep][:, 2] * prediction.boxes[keep][:, 3] / image_area).tolist()},
            classes=[category_names[int(c)] for c in prediction.category_ids[keep].tolist()],
        )  # fmt: skip
