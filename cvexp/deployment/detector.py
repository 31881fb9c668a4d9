"""A trained detector as a deployable artifact: the Hugging Face export, and detections as JSON records.

The export directory is what ``save_pretrained`` writes for the model and its image processor, plus
``cvexp.json`` (the adapter config, the dataset's categories, the training image size). transformers
loads it on its own (``pipeline("object-detection", model=dir)``); :func:`load_exported_detector`
rebuilds the cvexp view of it, whose detections equal those of the checkpoint
(:func:`detect_images` on either).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cvexp.adapters.base import Detections
from cvexp.evaluation.checkpoint import TrainedDetector, resolve_device

CVEXP_EXPORT_FILE = "cvexp.json"


def export_huggingface(detector: TrainedDetector, output_dir: Path) -> Path:
    """Writes ``detector`` as a Hugging Face model directory (model, image processor, ``cvexp.json``).

    The image processor is saved with the training's resize (longer side ``data.image_size``, or
    that square for fixed-shape processors: :func:`~cvexp.data.collate.processor_size`), so that
    transformers' own pipeline feeds the model the pixels it was trained on.
    """
    from cvexp.data.collate import processor_size

    output_dir.mkdir(parents=True, exist_ok=True)
    # A from-scratch model trains its backbone's batch norm (BatchNorm2d in place of HF's frozen
    # one); the HF class reloads the same statistics into its frozen layer, but has no counter.
    state_dict = {name: value for name, value in detector.model.state_dict().items() if not name.endswith("num_batches_tracked")}
    detector.model.save_pretrained(output_dir, state_dict=state_dict)
    processor = copy.deepcopy(detector.image_processor)
    if detector.image_size:
        processor.size = processor_size(processor, detector.image_size)
    processor.save_pretrained(output_dir)
    metadata = {
        "adapter": OmegaConf.to_container(detector.config.adapter, resolve=True),
        "categories": [{"id": c.id, "name": c.name} for c in detector.label_map.categories],
        "image_size": detector.image_size,
    }
    (output_dir / CVEXP_EXPORT_FILE).write_text(json.dumps(metadata, indent=2))
    return output_dir


def load_exported_detector(export_dir: str | Path, device: str = "auto") -> TrainedDetector:
    """Rebuilds a :class:`TrainedDetector` from a directory written by :func:`export_huggingface`."""
    from hydra.utils import instantiate
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    from cvexp.data.coco import Category, LabelMap

    path = Path(export_dir)
    metadata_path = path / CVEXP_EXPORT_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{metadata_path}: missing; export the model with cvexp.register (it writes the model directory "
                                f"with save_pretrained and {CVEXP_EXPORT_FILE}).")  # fmt: skip
    metadata = json.loads(metadata_path.read_text())
    label_map = LabelMap([Category(int(c["id"]), str(c["name"])) for c in metadata["categories"]])
    adapter = instantiate(metadata["adapter"], label_map=label_map)
    resolved = resolve_device(device)
    model = AutoModelForObjectDetection.from_pretrained(path).to(resolved).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    config = OmegaConf.create({"adapter": metadata["adapter"], "data": {"image_size": metadata.get("image_size")}})
    return TrainedDetector(model, adapter, processor, label_map, config, resolved)


def detect_images(detector: TrainedDetector, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Detections]:
    """Unthresholded detections of HWC uint8 RGB ``images``, in original pixel coordinates (cvexp's own path)."""
    from cvexp.data.collate import DetectionCollator
    from cvexp.evaluation.evaluator import run_inference
    from cvexp.evaluation.predictor import unlabelled_sample

    collate = DetectionCollator(detector.image_processor, detector.adapter, image_size=detector.image_size)
    samples = [unlabelled_sample(image, index) for index, image in enumerate(images)]
    batches = [collate(samples[start : start + batch_size]) for start in range(0, len(samples), batch_size)]
    predictions = run_inference(detector.model, detector.adapter, batches, detector.device, progress=False)
    return [detection for detection, _ in predictions]


def detection_records(detections: Detections, category_names: dict[int, str], score_threshold: float) -> list[dict[str, Any]]:
    """One image's detections scoring at least ``score_threshold``, best first, as JSON-ready records.

    Each record: ``bbox`` (absolute ``[x, y, w, h]`` in the original image's pixels), ``score``,
    ``category_id`` (the dataset's own id) and ``category_name``.
    """
    keep = detections.scores >= score_threshold
    order = torch.argsort(detections.scores[keep], descending=True)
    boxes, scores, ids = detections.boxes[keep][order], detections.scores[keep][order], detections.category_ids[keep][order]
    return [
        {"bbox": [float(v) for v in box], "score": float(score), "category_id": int(category), "category_name": category_names[int(category)]}
        for box, score, category in zip(boxes.tolist(), scores.tolist(), ids.tolist(), strict=True)
    ]
