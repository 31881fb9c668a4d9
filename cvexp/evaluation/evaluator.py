"""Evaluation of a trained model: inference over a split, the task's metrics, plots and results file.

:func:`run_evaluation` is the job behind ``python -m cvexp.evaluate``, for every task (the model
artifact names its task, :mod:`cvexp.tasks`). The detection report (:func:`write_report`: COCO
metrics, PR curves, confusion matrix, results json) lives here too; ``cvexp.train`` writes the same
report on its test split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pycocotools import mask as coco_mask

from cvexp.adapters.base import Detections
from cvexp.data.dataset import LabelledImageDataset
from cvexp.data.labels import Category
from cvexp.data.targets import DetectionTarget
from cvexp.errors import DatasetError, instantiate
from cvexp.evaluation.coco_metric import CocoEvaluation, coco_ground_truth, run_coco_evaluation
from cvexp.evaluation.plots import plot_confusion_matrix, plot_pr_curves, plot_samples
from cvexp.evaluation.report import metrics_table, print_table
from cvexp.tasks.base import EvaluationReport

log = logging.getLogger(__name__)

Prediction = tuple[Detections, DetectionTarget]


def coco_results(detections: Iterable[Detections], file_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Rows of a COCO results json (the dataset's category ids, absolute ``xywh``), every detection.

    ``file_names`` (image id -> file name) adds a ``file_name`` field to each row; pycocotools'
    ``loadRes`` ignores it.
    """
    rows = []
    for detection in detections:
        extra = {"file_name": file_names[detection.image_id]} if file_names else {}
        rows += [{**row, **extra} for row in detection.to_coco_results()]
    return rows


def evaluate_predictions(predictions: Sequence[Prediction], categories: Sequence[Category]) -> tuple[list[dict[str, Any]], CocoEvaluation]:
    """The COCO results rows of ``predictions`` and their evaluation against the predictions' targets.

    The metrics are computed from the rows exactly as a results json holds them (rounded), so that
    pycocotools run on that file gives the same numbers.
    """
    results = coco_results(detection for detection, _ in predictions)
    ground_truth = coco_ground_truth([target for _, target in predictions], categories)
    return results, run_coco_evaluation(ground_truth, results, categories)


def confusion_matrix(predictions: Sequence[Prediction], categories: Sequence[Category],
                     iou_threshold: float = 0.5, score_threshold: float = 0.25) -> np.ndarray:  # fmt: skip
    """``(K+1, K+1)`` counts: rows are ground-truth classes, columns predicted classes; index K is background.

    Per image, detections scoring at least ``score_threshold`` are taken best first; each is matched
    to the unmatched ground-truth box (any class) it overlaps most, if that IoU reaches
    ``iou_threshold``. An unmatched detection counts in the background row (a false positive), an
    unmatched box in the background column (a miss). Crowd boxes are left out, as COCO ignores them.
    """
    index = {category.id: i for i, category in enumerate(categories)}
    background = len(categories)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for detection, target in predictions:
        keep = detection.scores >= score_threshold
        order = torch.argsort(detection.scores[keep], descending=True)
        boxes = detection.boxes[keep][order].double().numpy()
        predicted = [index[int(c)] for c in detection.category_ids[keep][order]]
        not_crowd = target.iscrowd == 0
        truth_boxes = target.boxes[not_crowd].double().numpy()
        truth = [index.get(int(c), background) for c in target.category_ids[not_crowd]]
        matched = np.zeros(len(truth), dtype=bool)
        ious = np.zeros((len(boxes), len(truth_boxes)))
        if len(boxes) and len(truth_boxes):
            ious = coco_mask.iou(boxes, truth_boxes, [0] * len(truth_boxes))
        for row, label in enumerate(predicted):
            candidates = np.flatnonzero(~matched)
            best = candidates[np.argmax(ious[row, candidates])] if len(candidates) else None
            if best is not None and ious[row, best] >= iou_threshold:
                matched[best] = True
                matrix[truth[best], label] += 1
            else:
                matrix[background, label] += 1
        for truth_label in np.asarray(truth, dtype=np.int64)[~matched]:
            matrix[truth_label, background] += 1
    return matrix


def write_report(
    predictions: Sequence[Prediction],
    categories: Sequence[Category],
    output_dir: Path,
    load_image: Callable[[int], np.ndarray],
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    render_score_threshold: float = 0.5,
    num_samples: int = 8,
) -> EvaluationReport:
    """Computes COCO metrics and writes the report files to ``output_dir``.

    Files: ``coco_results.json`` (every detection, the dataset's category ids), ``metrics.json``,
    ``pr_curves.png``, ``confusion_matrix.png`` and ``samples.png`` (the first ``num_samples``
    images, loaded with ``load_image(image_id)``).

    The metrics are those of :func:`evaluate_predictions`: pycocotools run on the written results
    json gives the same numbers.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    results, evaluation = evaluate_predictions(predictions, categories)
    files = {"results": output_dir / "coco_results.json", "metrics": output_dir / "metrics.json"}
    files["results"].write_text(json.dumps(results))
    files["metrics"].write_text(json.dumps(evaluation.metrics, indent=2))
    files["pr_curves"] = plot_pr_curves(evaluation, categories, output_dir / "pr_curves.png", iou=iou_threshold)
    matrix = confusion_matrix(predictions, categories, iou_threshold, score_threshold)
    files["confusion_matrix"] = plot_confusion_matrix(
        matrix, [c.name for c in categories], output_dir / "confusion_matrix.png",
        title=f"Confusion matrix (IoU ≥ {iou_threshold:g}, score ≥ {score_threshold:g})",
    )  # fmt: skip
    if num_samples > 0 and predictions:
        samples = [(load_image(target.image_id), detection, target) for detection, target in predictions[:num_samples]]
        files["samples"] = plot_samples(samples, categories, render_score_threshold, output_dir / "samples.png")
    return EvaluationReport(evaluation.metrics, files, num_images=len(predictions), num_predictions=len(results))


def dataset_image_loader(dataset: LabelledImageDataset) -> Callable[[int], np.ndarray]:
    """``image_id -> image`` for a dataset (its own transform, if any, applies)."""
    position = {image_id: index for index, image_id in enumerate(dataset.image_ids)}
    return lambda image_id: dataset[position[image_id]].image


def evaluation_split(data_cfg: DictConfig | dict, split: str, categories: Sequence[Category], stored_in: str | None = None) -> LabelledImageDataset:
    """The dataset of one split of a data config, checked against the model's categories.

    Only that split is read (a DataModule would read the training split too, for its label map).
    ``stored_in`` names the artifact or checkpoint a data config comes from: such a config may build
    only cvexp's own components (:func:`cvexp.artifact.safe_instantiate`).
    """
    from cvexp.artifact import safe_instantiate

    datamodule = safe_instantiate(data_cfg, stored_in, path="data") if stored_in else instantiate(data_cfg)
    datamodule.prepare_data()  # e.g. writes the synthetic dataset when it is not there yet
    if split not in datamodule.splits:
        raise DatasetError(f"split={split}: the data config has no '{split}' split; pick one of {sorted(datamodule.splits)}.")
    dataset = datamodule.split_dataset(split)
    unknown = {c.id for c in dataset.label_map.categories} - {c.id for c in categories}
    if unknown:
        raise DatasetError(f"data.{split} ({dataset.images_dir}): category ids {sorted(unknown)} are not among the model's classes "
                           f"{[(c.id, c.name) for c in categories]}; evaluate on data labelled like the training data.")  # fmt: skip
    return dataset


def model_split(predictor: Any, data_cfg: DictConfig | None, split: str, ckpt_path: str) -> tuple[LabelledImageDataset, Any]:
    """The split to evaluate a model on, from ``data_cfg`` when given, else from the data config stored with the model.

    Returns the dataset and the data config it came from.
    """
    if data_cfg:
        return evaluation_split(data_cfg, split, predictor.label_map.categories), data_cfg
    stored = predictor.config.get("data")
    if not stored:
        raise DatasetError(f"ckpt_path={ckpt_path}: the model stores no data config to evaluate on. Fix: choose the data, e.g. "
                           "data=rbc_cells, or data=coco data.root=... for your own.")  # fmt: skip
    return evaluation_split(stored, split, predictor.label_map.categories, stored_in=ckpt_path), OmegaConf.create(stored)


@dataclass
class EvaluationSummary:
    """What an evaluation run produced."""

    split: str
    metrics: dict[str, float]
    files: dict[str, Path]
    mlflow_run_id: str | None = None


def run_evaluation(cfg: DictConfig) -> EvaluationSummary:
    """The ``cvexp.evaluate`` job: rebuild the model from ``cfg.ckpt_path``, evaluate ``cfg.split``, report.

    ``cfg.ckpt_path`` is a model artifact or a checkpoint; the data config stored with it is used
    unless ``cfg.data`` is set.
    """
    from cvexp.inference.predictor import Predictor
    from cvexp.tracking.mlflow import log_evaluation_run

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    predictor = Predictor.load(cfg.ckpt_path, device=cfg.get("device", "auto"))
    categories = predictor.label_map.categories
    dataset, data_cfg = model_split(predictor, cfg.get("data"), cfg.split, str(cfg.ckpt_path))
    batch_size = int(cfg.get("batch_size") or data_cfg.get("batch_size") or 8)
    predictions = predictor.predict_dataset(dataset, batch_size, int(data_cfg.get("num_workers") or 0), description=f"evaluating {cfg.split}")
    output_dir = Path(cfg.paths.output_dir)
    report = predictor.task.write_report(predictions, categories, output_dir, dataset_image_loader(dataset), cfg.get("report") or {})
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    report.files["config"] = output_dir / "config.yaml"

    print(f"{cfg.ckpt_path}: {report.num_images} images of the {cfg.split} split, {report.num_predictions} predictions "
          f"({predictor.task.name})")
    print_table(metrics_table(f"cvexp.evaluate: {cfg.split}", {cfg.split: report.metrics}))
    run_id = None
    if cfg.get("logger"):
        params = {"ckpt_path": str(cfg.ckpt_path), "split": cfg.split, "data.root": str(data_cfg.get("root")),
                  "model_class": predictor.metadata.model_class, "weights": predictor.metadata.weights.tag(),
                  "num_images": report.num_images}  # fmt: skip
        run_id = log_evaluation_run(cfg.logger, f"{Path(cfg.ckpt_path).stem}-{cfg.split}", params,
                                    {f"{cfg.split}/{name}": value for name, value in report.metrics.items()}, report.files)  # fmt: skip
    print(f"report written to {output_dir}")
    if run_id:
        print(f"MLflow run {run_id} (experiment {cfg.logger.experiment_name})")
    return EvaluationSummary(cfg.split, report.metrics, report.files, run_id)
