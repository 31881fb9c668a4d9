"""A model exported by ``cvexp.export``, run without torch: what the served ONNX model runs.

:class:`ExportedModel` needs onnxruntime, numpy, Pillow, transformers' PIL image processor (the
artifact's ``preprocessor_config.json``) and pycocotools, and nothing of torch (unless transformers
declares that the image processor needs it: Mask2Former's does): the MLflow model
that ``cvexp.register ckpt_path=<artifact>/model.onnx`` logs pins those and ships cvexp's code, so
it serves where torch is not installed. Its steps are those of the PyTorch path, in numpy:

1. the image processor makes the graph's inputs (``return_tensors="np"``, its PIL backend);
2. onnxruntime runs the graph, which holds the adapter's post-processing
   (:meth:`~cvexp.adapters.base.OutputAdapter.exported_outputs`);
3. a *reader*, named by the adapter's ``exported_format`` in ``export.json``, puts the outputs in
   each image's own pixels and the dataset's category ids, as the adapter's ``format_exported``
   does in torch;
4. the records come from :mod:`cvexp.deployment.responses`, the same functions that answer for the
   PyTorch model.

``tests/test_export.py`` checks that the served answers equal the PyTorch path's with torch made
unimportable. Evaluation, prediction and the accuracy gate run exports through the one inference
path instead (:class:`~cvexp.inference.onnx.OnnxPredictor`), as they need cvexp's datasets and metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.deployment.responses import (
    classification_records,
    detection_records,
    instance_records,
    mask_rles,
    segmentation_records,
)

#: The files of the model artifact that the exported model reads (written by cvexp.train and cvexp.export).
METADATA_FILE = "cvexp.json"
EXPORT_INFO_FILE = "export.json"

# onnxruntime's names of the input element types an export can have.
_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


@dataclass
class ExportedDetections:
    """One image's detections: ``boxes`` ``(N, 4)`` absolute ``xywh``, ``scores`` ``(N,)``, the dataset's ``category_ids``."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def records(self, category_names: Mapping[int, str], score_threshold: float) -> list[dict[str, Any]]:
        return detection_records(self.boxes, self.scores, self.category_ids, category_names, score_threshold)


@dataclass
class ExportedInstances:
    """One image's instances: detections with a COCO RLE mask each (``masks``), best first."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    masks: list[dict[str, Any]]

    def records(self, category_names: Mapping[int, str], score_threshold: float) -> list[dict[str, Any]]:
        return instance_records(self.boxes, self.scores, self.category_ids, self.masks, category_names, score_threshold)


@dataclass
class ExportedClassScores:
    """One image's probability of every class: ``scores[i]`` belongs to ``category_ids[i]``."""

    scores: np.ndarray
    category_ids: np.ndarray

    def records(self, category_names: Mapping[int, str], score_threshold: float) -> list[dict[str, Any]]:
        return classification_records(self.scores, self.category_ids, category_names, score_threshold)


@dataclass
class ExportedMask:
    """One image's class per pixel (the dataset's category ids), at its own size."""

    mask: np.ndarray

    def records(self, category_names: Mapping[int, str], score_threshold: float) -> list[dict[str, Any]]:
        return segmentation_records(self.mask, category_names)


ExportedPrediction = ExportedDetections | ExportedInstances | ExportedClassScores | ExportedMask

#: ``exported_format`` -> the reader of the graph's outputs: (outputs, each image's (height, width), the category id of
#: each contiguous label) -> each image's prediction.
Reader = Callable[[Sequence[np.ndarray], Sequence[tuple[int, int]], np.ndarray], list[ExportedPrediction]]
READERS: dict[str, Reader] = {}


def reader(name: str) -> Callable[[Reader], Reader]:
    """Registers a reader of exported outputs under ``name`` (an adapter's ``exported_format``)."""

    def register(function: Reader) -> Reader:
        READERS[name] = function
        return function

    return register


@reader("ranked_boxes")
def read_ranked_boxes(outputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], category_ids: np.ndarray) -> list[ExportedDetections]:
    """``boxes`` ``(B, K, 4)`` as fractions of the image, ``scores`` and ``labels`` ``(B, K)``: detections in pixels (DetrAdapter.format_exported)."""
    boxes, scores, labels = outputs
    return [ExportedDetections(image_boxes.astype(np.float32) * np.array([width, height, width, height], dtype=np.float32),
                               image_scores.astype(np.float32), category_ids[image_labels.astype(np.int64)])
            for image_boxes, image_scores, image_labels, (height, width) in zip(boxes, scores, labels, sizes, strict=True)]  # fmt: skip


@reader("ranked_masks")
def read_ranked_masks(outputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], category_ids: np.ndarray) -> list[ExportedInstances]:
    """``scores`` and ``labels`` ``(B, K)``, ``masks`` ``(B, K, h, w)`` logits: each mask upsampled to its image's size as
    torch does and thresholded at 0, scored by class probability x its mean probability inside it, best first
    (MaskClassificationAdapter.format_exported)."""
    predictions = []
    for scores, labels, logits, size in zip(*outputs, sizes, strict=True):
        upsampled = resize_bilinear(logits.astype(np.float32), size)
        binary = upsampled > 0
        inside = binary.reshape(len(binary), -1)
        probabilities = 0.5 * (1 + np.tanh(0.5 * upsampled.reshape(len(binary), -1)))  # the sigmoid, without overflow
        quality = (probabilities * inside).sum(1) / np.maximum(inside.sum(1), 1)
        rles, boxes = mask_rles(binary)
        scored = scores.astype(np.float32) * quality.astype(np.float32)
        order = np.argsort(-scored, kind="stable")
        predictions.append(ExportedInstances(boxes[order], scored[order], category_ids[labels.astype(np.int64)][order], [rles[i] for i in order]))
    return predictions


@reader("class_scores")
def read_class_scores(outputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], category_ids: np.ndarray) -> list[ExportedClassScores]:
    """``scores`` ``(B, K)``: every class's probability (ImageClassificationAdapter.format_exported)."""
    return [ExportedClassScores(scores, category_ids) for scores in outputs[0].astype(np.float32)]


@reader("pixel_logits")
def read_pixel_logits(outputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], category_ids: np.ndarray) -> list[ExportedMask]:
    """``logits`` ``(B, K, h, w)``: upsampled to each image's size as torch does, the best class per pixel
    (SemanticSegmentationAdapter.format_exported)."""
    return [ExportedMask(category_ids[resize_bilinear(logits, size).argmax(0)]) for logits, size in zip(outputs[0].astype(np.float32), sizes, strict=True)]


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` resized to ``(C, *size)``, as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    computes it (half-pixel centres, edges clamped, no antialiasing)."""

    def axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(in_size / out_size) - 0.5, 0)
        low = np.minimum(source.astype(np.int64), in_size - 1)
        return low, np.minimum(low + 1, in_size - 1), (source - low).astype(np.float32)

    top, bottom, dy = axis(array.shape[1], size[0])
    rows = array[:, top, :] * (1 - dy)[None, :, None] + array[:, bottom, :] * dy[None, :, None]
    left, right, dx = axis(array.shape[2], size[1])
    return rows[:, :, left] * (1 - dx)[None, None, :] + rows[:, :, right] * dx[None, None, :]


class ExportedModel:
    """An exported graph with its artifact's image processor and categories, run by onnxruntime with numpy only.

    Args:
        session: the onnxruntime session of the graph.
        image_processor: the artifact's image processor (transformers, PIL backend).
        categories: the artifact's categories (``{"id", "name"}``) in training order.
        read: the reader of the graph's outputs (:data:`READERS`).
    """

    #: What serving it needs (the served pyfunc pins them); cvexp's own code travels inside the MLflow model.
    SERVING_REQUIREMENTS = ("mlflow", "onnxruntime", "numpy", "pillow", "pandas", "transformers", "pycocotools")
    ships_cvexp_code = True

    def __init__(self, session: Any, image_processor: Any, categories: Sequence[Mapping[str, Any]], read: Reader) -> None:
        self.session = session
        self.image_processor = image_processor
        self.category_ids = np.array([int(category["id"]) for category in categories], dtype=np.int64)
        self.category_names = {int(category["id"]): str(category["name"]) for category in categories}
        self.read = read
        self.inputs = {node.name: _INPUT_TYPES.get(node.type, np.float32) for node in session.get_inputs()}
        self.output_names = [node.name for node in session.get_outputs()]

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> ExportedModel:
        """``<artifact>/model.onnx`` with the artifact's ``preprocessor_config.json``, ``cvexp.json`` and ``export.json``."""
        import onnxruntime
        from transformers import AutoImageProcessor

        graph = Path(path)
        artifact = graph.parent
        files = {name: artifact / name for name in (METADATA_FILE, EXPORT_INFO_FILE)}
        for name, file in files.items():
            if not file.is_file():
                raise FileNotFoundError(f"{file}: missing beside {graph.name}; the exported model needs its artifact's {name}. "
                                        "Fix: export again with python -m cvexp.export ckpt_path=<artifact>.")  # fmt: skip
        metadata = json.loads(files[METADATA_FILE].read_text())
        export_format = json.loads(files[EXPORT_INFO_FILE].read_text()).get("exported_format", "ranked_boxes")  # exports before readers: boxes
        if export_format not in READERS:
            raise ValueError(f"{files[EXPORT_INFO_FILE]}: exported_format={export_format!r} has no reader (known: {sorted(READERS)}).")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        processor = AutoImageProcessor.from_pretrained(str(artifact), backend="pil")
        return cls(session, processor, metadata["categories"], READERS[export_format])

    @property
    def serving_requirements(self) -> tuple[str, ...]:
        """:attr:`SERVING_REQUIREMENTS`, and torch where transformers declares the image processor needs it (Mask2Former's
        PIL processor does, for its post-processing, which cvexp does not use: it must still import)."""
        declared = getattr(type(self.image_processor), "__backends", ())
        return self.SERVING_REQUIREMENTS + (("torch",) if "torch" in declared else ())

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[ExportedPrediction]:
        """The predictions of HWC uint8 RGB ``images`` (one graph run per ``batch_size`` of them; default all)."""
        batch_size = batch_size or len(images)
        predictions: list[ExportedPrediction] = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            encoded = self.image_processor(images=batch, return_tensors="np")
            feed = {name: np.asarray(encoded[name]).astype(dtype, copy=False) for name, dtype in self.inputs.items()}
            outputs = self.session.run(self.output_names, feed)
            predictions += self.read(outputs, [image.shape[:2] for image in batch], self.category_ids)
        return predictions

    def response(self, prediction: ExportedPrediction, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One image's answer, as the PyTorch model's task answers it (:meth:`cvexp.tasks.Task.response`)."""
        return prediction.records(self.category_names, float(params["score_threshold"]))
