"""Prediction: a trained model over a folder, a glob or a COCO split -> the task's results file.

:func:`run_prediction` is the job behind ``python -m cvexp.predict``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from cvexp.inference.inputs import ImageFilesDataset, resolve_inputs
from cvexp.inference.predictor import Predictor


@dataclass
class PredictionSummary:
    """What a prediction run wrote."""

    results_path: Path
    images_path: Path
    num_images: int
    num_predictions: int
    rendered: list[Path] = field(default_factory=list)


def run_prediction(cfg: DictConfig) -> PredictionSummary:
    """The ``cvexp.predict`` job: every prediction of every input image, to ``predictions.json`` in the run directory
    (in the form of the task's results file: COCO results rows for detection and instance segmentation).

    Also writes ``images.json`` (``id``, ``file_name``, ``height``, ``width`` of each image, a COCO
    ``images`` list) and, with ``render=true``, ``rendered/<id>_<name>.png``.
    """
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    predictor = Predictor.load(cfg.ckpt_path, device=cfg.get("device", "auto"))
    dataset = ImageFilesDataset(resolve_inputs(str(cfg.inputs), cfg.get("annotation_file")))
    predictions = predictor.predict_dataset(dataset, int(cfg.batch_size), int(cfg.get("num_workers") or 0))

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    file_names = {image.image_id: image.file_name for image in dataset.images}
    results = predictor.task.results((prediction for prediction, _ in predictions), file_names)
    summary = PredictionSummary(output_dir / "predictions.json", output_dir / "images.json", len(dataset), len(results))
    summary.results_path.write_text(json.dumps(results))
    summary.images_path.write_text(json.dumps(
        [{"id": t.image_id, "file_name": t.file_name, "height": t.size[0], "width": t.size[1]} for _, t in predictions]
    ))  # fmt: skip
    if cfg.get("render"):
        names = {c.id: c.name for c in predictor.label_map.categories}
        for index, (detection, target) in enumerate(predictions):
            path = output_dir / "rendered" / f"{target.image_id}_{Path(target.file_name).stem}.png"
            summary.rendered.append(predictor.task.render(dataset[index].image, detection, names, float(cfg.render_score_threshold), path))
    print(f"{summary.num_predictions} predictions on {summary.num_images} images -> {summary.results_path}")
    if summary.rendered:
        print(f"rendered images (score >= {cfg.render_score_threshold}) in {output_dir / 'rendered'}")
    return summary
