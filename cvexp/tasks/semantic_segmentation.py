"""Semantic segmentation: a class per pixel; mIoU, per-class IoU and pixel accuracy, ignore index honoured."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from cvexp.adapters.predictions import SegmentationMap
from cvexp.data.labels import Category
from cvexp.deployment.responses import class_rles, segmentation_records
from cvexp.tasks.base import EvaluationReport, PredictionFeatures, Task


class SemanticSegmentationTask(Task):
    """Checkpoints and sweeps follow ``val/miou`` by default.

    Report options (conf/report/): ``num_samples`` (images in ``samples.png``). Results: a PNG per
    image in ``masks/`` whose pixel values are the predicted category ids (the layout the data came
    in), and ``predictions.json`` with each image's classes as COCO RLEs.
    """

    name = "semantic_segmentation"
    headline = ("miou", "pixel_accuracy")
    results_file = "predictions.json"

    def metric(self, categories: Sequence[Category]) -> Metric:
        from cvexp.evaluation.segmentation_metric import SemanticSegmentationMetric

        return SemanticSegmentationMetric(categories)

    def results(self, predictions: Iterable[SegmentationMap], file_names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
        rows = []
        for prediction in predictions:
            row = {"image_id": prediction.image_id, "segments": [{"category_id": c, "segmentation": rle} for c, rle in class_rles(prediction.mask.numpy())]}
            rows.append({**row, "file_name": file_names[prediction.image_id]} if file_names else row)
        return rows

    def write_report(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category], output_dir: Path,
                     load_image: Callable[[int], np.ndarray], options: Mapping[str, Any]) -> EvaluationReport:  # fmt: skip
        """``metrics.json``, ``predictions.json``, ``masks/<image id>.png``, ``per_class_iou.png`` and ``samples.png``
        (each image beside its true and predicted masks)."""
        from PIL import Image

        from cvexp.evaluation.plots import class_colors, overlay_mask, plot_class_bars, plot_image_grid

        output_dir.mkdir(parents=True, exist_ok=True)
        metric = self.metric(categories)
        metric.update([p for p, _ in predictions], [t for _, t in predictions])
        metrics = metric.compute()
        files = {"results": output_dir / self.results_file, "metrics": output_dir / "metrics.json", "masks": output_dir / "masks"}
        files["results"].write_text(json.dumps(self.results(p for p, _ in predictions)))
        files["metrics"].write_text(json.dumps(metrics, indent=2))
        files["masks"].mkdir(exist_ok=True)
        for prediction, _ in predictions:
            Image.fromarray(prediction.mask.numpy().astype(np.uint8)).save(files["masks"] / f"{prediction.image_id}.png")
        files["per_class"] = plot_class_bars({c.name: metrics.get(f"iou/{c.name}", float("nan")) for c in categories},
                                             output_dir / "per_class_iou.png", "IoU per class (n/a: in neither truth nor prediction)", "IoU")  # fmt: skip
        ids = [c.id for c in categories]
        panels = []
        for prediction, target in predictions[: int(options.get("num_samples", 8)) // 2 or 1]:
            image = load_image(target.image_id)
            panels += [(overlay_mask(image, target.mask.numpy(), ids), f"{target.file_name or target.image_id}: truth"),
                       (overlay_mask(image, prediction.mask.numpy(), ids), "prediction")]  # fmt: skip
        if panels:
            legend = dict(zip([c.name for c in categories], class_colors(len(categories)), strict=True))
            files["samples"] = plot_image_grid(panels, output_dir / "samples.png", legend=legend)
        return EvaluationReport(metrics, files, num_images=len(predictions), num_predictions=len(predictions))

    def response(self, prediction: SegmentationMap, category_names: Mapping[int, str], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One record per class present: ``category_id``, ``category_name``, ``pixel_fraction``, and its pixels as a
        COCO RLE in flat fields (``rle_counts``, ``height``, ``width``; pycocotools' ``decode`` reads them back)."""
        return segmentation_records(prediction.mask.numpy(), category_names)

    def render(self, image: np.ndarray, prediction: SegmentationMap, category_names: Mapping[int, str], score_threshold: float, path: Path) -> Path:
        from cvexp.evaluation.plots import overlay_mask, save_image

        return save_image(overlay_mask(image, prediction.mask.numpy(), sorted(category_names)), path)

    def prediction_features(self, prediction: SegmentationMap, image_shape: tuple[int, int], category_names: Mapping[int, str],
                            score_threshold: float) -> PredictionFeatures:  # fmt: skip
        """Per image, the share of its pixels each class covers (``share/<class>``) and the mean pixel confidence; the classes present."""
        total = float(prediction.mask.numel())
        shares = {f"share/{name}": float((prediction.mask == c).sum()) / total for c, name in category_names.items()}
        confidence = float(prediction.confidence.mean()) if prediction.confidence is not None else float("nan")
        present = [category_names[int(c)] for c in torch.unique(prediction.mask).tolist() if int(c) in category_names]
        return PredictionFeatures(per_image={"mean_confidence": confidence, **shares}, classes=present)
