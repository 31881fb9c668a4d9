"""Image classification: one class per image; accuracy, macro-F1 and per-class precision/recall (torchmetrics)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torchmetrics import Metric

from cvexp.adapters.predictions import ClassScores
from cvexp.data.labels import Category
from cvexp.deployment.responses import classification_records
from cvexp.tasks.base import EvaluationReport, PredictionFeatures, Task


class ClassificationTask(Task):
    """Checkpoints and sweeps follow ``val/accuracy`` by default.

    Report options (conf/report/): ``num_samples`` (images in ``samples.png``).
    Results file ``predictions.json``: per image ``image_id``, ``category_id`` (predicted),
    ``score`` and ``scores`` (every class's probability, by category id).
    """

    name = "classification"
    headline = ("accuracy", "macro_f1")
    results_file = "predictions.json"

    def metric(self, categories: Sequence[Category]) -> Metric:
        from cvexp.evaluation.classification_metric import ClassificationMetric

        return ClassificationMetric(categories)

    def results(self, predictions: Iterable[ClassScores], file_names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
        rows = []
        for prediction in predictions:
            scores = {str(int(c)): round(float(s), 5) for c, s in zip(prediction.category_ids.tolist(), prediction.scores.tolist(), strict=True)}
            row = {"image_id": prediction.image_id, "category_id": prediction.category_id, "score": max(scores.values()), "scores": scores}
            rows.append({**row, "file_name": file_names[prediction.image_id]} if file_names else row)
        return rows

    def write_report(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category], output_dir: Path,
                     load_image: Callable[[int], np.ndarray], options: Mapping[str, Any]) -> EvaluationReport:  # fmt: skip
        """``metrics.json``, ``predictions.json``, ``confusion_matrix.png``, ``per_class_recall.png`` and ``samples.png``."""
        from cvexp.evaluation.plots import plot_class_bars, plot_confusion_matrix, plot_image_grid

        output_dir.mkdir(parents=True, exist_ok=True)
        metric = self.metric(categories)
        metric.update([p for p, _ in predictions], [t for _, t in predictions])
        metrics = metric.compute()
        names = [c.name for c in categories]
        rows = self.results(p for p, _ in predictions)
        files = {"results": output_dir / self.results_file, "metrics": output_dir / "metrics.json"}
        files["results"].write_text(json.dumps(rows))
        files["metrics"].write_text(json.dumps(metrics, indent=2))
        files["confusion_matrix"] = plot_confusion_matrix(metric.confusion_matrix().numpy(), names, output_dir / "confusion_matrix.png",
                                                          title="Confusion matrix (top class)", background=False)  # fmt: skip
        files["per_class"] = plot_class_bars({name: metrics[f"recall/{name}"] for name in names}, output_dir / "per_class_recall.png",
                                             "Recall per class", "recall")  # fmt: skip
        by_id = {c.id: c.name for c in categories}
        panels = [(load_image(t.image_id), f"{'✓' if p.category_id == t.category_id else '✗'} {by_id[p.category_id]} "
                   f"{float(p.scores.max()):.2f}\n(true: {by_id[t.category_id]})") for p, t in predictions[: int(options.get("num_samples", 8))]]  # fmt: skip
        if panels:
            files["samples"] = plot_image_grid(panels, output_dir / "samples.png")
        return EvaluationReport(metrics, files, num_images=len(predictions), num_predictions=len(rows))

    def response(self, prediction: ClassScores, category_names: Mapping[int, str], params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The classes scoring at least ``params["score_threshold"]`` (the top one always), best first:
        ``category_id``, ``category_name``, ``score``."""
        return classification_records(prediction.scores.numpy(), prediction.category_ids.numpy(), category_names, float(params["score_threshold"]))

    def render(self, image: np.ndarray, prediction: ClassScores, category_names: Mapping[int, str], score_threshold: float, path: Path) -> Path:
        from cvexp.evaluation.plots import plot_image_grid

        return plot_image_grid([(image, f"{category_names[prediction.category_id]} {float(prediction.scores.max()):.2f}")], path, columns=1)

    def prediction_features(self, prediction: ClassScores, image_shape: tuple[int, int], category_names: Mapping[int, str],
                            score_threshold: float) -> PredictionFeatures:  # fmt: skip
        """``max_score`` (the top class's probability) per image; the predicted class."""
        return PredictionFeatures(per_image={"max_score": float(prediction.scores.max())}, classes=[category_names[prediction.category_id]])
