"""Instance segmentation: detections with a mask each; COCO ``segm`` and ``bbox`` mAP (pycocotools semantics)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from cvexp.adapters.predictions import Detections
from cvexp.data.labels import Category
from cvexp.deployment.responses import instance_records
from cvexp.tasks.base import EvaluationReport, PredictionFeatures
from cvexp.tasks.detection import DetectionTask


class InstanceSegmentationTask(DetectionTask):
    """Checkpoints and sweeps follow ``val/mask_map`` (COCO mask mAP@[.5:.95]) by default.

    The results file is a COCO results json whose rows carry ``segmentation`` RLEs; the report adds
    the ``segm`` metrics (``mask_map``, ``mask_map_50``, ... ``mask_ap/<class>``) to the detection
    report's box metrics, both from that file as pycocotools reads it. Report options: as detection.
    """

    name = "instance_segmentation"
    headline = ("mask_map_50", "mask_map", "map_50")
    results_file = "coco_results.json"

    def metric(self, categories: Sequence[Category]) -> Any:
        from cvexp.evaluation.coco_metric import CocoInstanceSegmentationMetric

        return CocoInstanceSegmentationMetric(categories)

    def write_report(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category], output_dir: Path,
                     load_image: Callable[[int], np.ndarray], options: Mapping[str, Any]) -> EvaluationReport:  # fmt: skip
        from cvexp.evaluation.coco_metric import coco_ground_truth, run_coco_evaluation

        report = super().write_report(predictions, categories, output_dir, load_image, options)
        results = json.loads(report.files["results"].read_text())  # exactly what the file holds, as pycocotools reads it
        ground_truth = coco_ground_truth([target for _, target in predictions], categories)
        report.metrics.update(run_coco_evaluation(ground_truth, results, categories, iou_type="segm").metrics)
        report.files["metrics"].write_text(json.dumps(report.metrics, indent=2))
        return report

    def response(self, prediction: Detections, category_names: Mapping[int, str], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The detection records (see :meth:`DetectionTask.response`), each with its mask as a COCO RLE in flat
        fields: ``rle_counts``, ``height``, ``width``."""
        return instance_records(prediction.boxes.numpy(), prediction.scores.numpy(), prediction.category_ids.numpy(), prediction.masks or [],
                                category_names, float(params["score_threshold"]))  # fmt: skip

    def prediction_features(self, prediction: Detections, image_shape: tuple[int, int], category_names: Mapping[int, str],
                            score_threshold: float) -> PredictionFeatures:  # fmt: skip
        """The detection features (instances per image, scores, box areas, classes) and ``mask_area`` (fraction of the
        image) per instance scoring at least ``score_threshold``."""
        features = super().prediction_features(prediction, image_shape, category_names, score_threshold)
        keep = (prediction.scores >= score_threshold).nonzero().flatten().tolist()
        image_area = float(image_shape[0] * image_shape[1])
        features.per_item["mask_area"] = [float(coco_mask.area(prediction.masks[i])) / image_area for i in keep] if prediction.masks else []
        return features
