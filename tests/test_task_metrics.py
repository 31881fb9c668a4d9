"""Task metrics beyond boxes: classification, semantic segmentation, instance masks (COCO segm).

Known answers worked out by hand, parity with torchmetrics' class API, with Hugging Face
``evaluate``'s mean_iou algorithm and with pycocotools' COCOeval, and the per-image de-duplication
that DDP needs (an image the sampler repeats counts once).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cvexp.adapters.predictions import ClassScores, Detections, SegmentationMap
from cvexp.data.labels import Category
from cvexp.data.targets import IGNORE_INDEX, ClassificationTarget, DetectionTarget, SegmentationTarget
from cvexp.evaluation import classification_metric, segmentation_metric
from cvexp.evaluation.classification_metric import ClassificationMetric
from cvexp.evaluation.coco_metric import (
    COCO_STAT_NAMES,
    MASK_STAT_NAMES,
    CocoDetectionMetric,
    CocoInstanceSegmentationMetric,
    first_occurrences,
)
from cvexp.evaluation.segmentation_metric import SemanticSegmentationMetric, segmentation_scores

# --- Shared de-duplication ---------------------------------------------------------------------


def test_first_occurrences_keeps_the_lowest_key_of_each_image_in_id_order() -> None:
    image_ids = np.array([5.0, 3.0, 5.0, 9.0, 3.0])
    occurrences = np.array([2.0, 7.0, 1.0, 0.0, 4.0])
    assert first_occurrences(image_ids, occurrences).tolist() == [4, 2, 3]  # ids 3, 5, 9
    assert first_occurrences(np.zeros(0), np.zeros(0)).tolist() == []


# --- Classification ----------------------------------------------------------------------------

ANIMALS = [Category(3, "cat"), Category(7, "dog"), Category(9, "fox"), Category(11, "owl")]
# (true id, predicted id) of images 1..6; "owl" occurs nowhere.
ANIMAL_CASE = [(3, 3), (3, 7), (7, 7), (7, 9), (9, 9), (3, 3)]


def _scores(
    image_id: int, predicted_id: int, categories: list[Category] = ANIMALS, rng: np.random.Generator | None = None
) -> ClassScores:
    """Class probabilities that put ``predicted_id`` on top, listed in reverse category order (the metric maps by id)."""
    ids = [c.id for c in reversed(categories)]
    raw = rng.random(len(ids)) if rng is not None else np.full(len(ids), 0.1)
    raw[ids.index(predicted_id)] = raw.max() + 1.0
    scores = torch.tensor(raw / raw.sum(), dtype=torch.float32)
    return ClassScores(image_id, scores, torch.tensor(ids))


def _classification_batch(case: list[tuple[int, int]], first_id: int = 1) -> tuple[list[ClassScores], list[ClassificationTarget]]:
    predictions = [_scores(first_id + i, predicted) for i, (_, predicted) in enumerate(case)]
    targets = [ClassificationTarget(first_id + i, truth, (32, 32)) for i, (truth, _) in enumerate(case)]
    return predictions, targets


def test_classification_known_answer() -> None:
    metric = ClassificationMetric(ANIMALS)
    metric.update(*_classification_batch(ANIMAL_CASE))
    values = metric.compute()
    # cat: TP 2, FP 0, FN 1; dog: TP 1, FP 1, FN 1; fox: TP 1, FP 1, FN 0; owl: nothing.
    expected = {
        "accuracy": 4 / 6,
        "precision/cat": 1.0, "recall/cat": 2 / 3, "f1/cat": 0.8,
        "precision/dog": 0.5, "recall/dog": 0.5, "f1/dog": 0.5,
        "precision/fox": 0.5, "recall/fox": 1.0, "f1/fox": 2 / 3,
        "precision/owl": 0.0, "recall/owl": 0.0, "f1/owl": 0.0,  # zero_division = 0
        # Macro means over the classes that occur in truth or predictions: owl is left out.
        "macro_precision": (1 + 0.5 + 0.5) / 3,
        "macro_recall": (2 / 3 + 0.5 + 1) / 3,
        "macro_f1": (0.8 + 0.5 + 2 / 3) / 3,
    }  # fmt: skip
    assert values == pytest.approx(expected, abs=1e-6)
    assert set(values) == set(expected)
    assert metric.confusion_matrix().tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # rows: truth


def test_classification_equals_torchmetrics_class_api() -> None:
    rng = np.random.default_rng(0)
    categories = [Category(10 + 3 * i, f"c{i}") for i in range(5)]
    ids = [c.id for c in categories]
    metric = ClassificationMetric(categories)
    num_classes = len(categories)
    references = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "macro_precision": MulticlassPrecision(num_classes, average="macro"),
        "macro_recall": MulticlassRecall(num_classes, average="macro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    per_class = {"precision": MulticlassPrecision(num_classes, average=None), "recall": MulticlassRecall(num_classes, average=None),
                 "f1": MulticlassF1Score(num_classes, average=None)}  # fmt: skip
    confusion = MulticlassConfusionMatrix(num_classes)
    for batch in range(4):
        truth = rng.integers(0, num_classes, 16)
        predicted = np.where(rng.random(16) < 0.6, truth, rng.integers(0, num_classes, 16))
        image_ids = range(batch * 16, batch * 16 + 16)
        metric.update([_scores(i, ids[p], categories, rng) for i, p in zip(image_ids, predicted, strict=True)],
                      [ClassificationTarget(i, ids[t], (8, 8)) for i, t in zip(image_ids, truth, strict=True)])  # fmt: skip
        for reference in [*references.values(), *per_class.values(), confusion]:
            reference.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    values = metric.compute()
    for name, reference in references.items():
        assert values[name] == pytest.approx(float(reference.compute()), abs=1e-6), name
    for key, reference in per_class.items():
        for category, value in zip(categories, reference.compute().tolist(), strict=True):
            assert values[f"{key}/{category.name}"] == pytest.approx(value, abs=1e-6), (key, category.name)
    assert torch.equal(metric.confusion_matrix(), confusion.compute().long())
    assert 0.4 < values["accuracy"] < 0.95  # a non-trivial case


def test_classification_counts_a_repeated_image_once(monkeypatch: pytest.MonkeyPatch) -> None:
    once = ClassificationMetric(ANIMALS)
    once.update(*_classification_batch(ANIMAL_CASE))
    expected = once.compute()
    twice = ClassificationMetric(ANIMALS)
    twice.update(*_classification_batch(ANIMAL_CASE))
    twice.update(*_classification_batch(ANIMAL_CASE[:2]))  # the DDP padding: images 1 and 2 again, in a later batch
    assert twice.compute() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(twice.confusion_matrix(), once.confusion_matrix())
    # Counting them twice would change the numbers: image 2 is a miss.
    doubled = ClassificationMetric(ANIMALS)
    doubled.update(*_classification_batch(ANIMAL_CASE + ANIMAL_CASE[:2], first_id=100))
    assert doubled.compute()["accuracy"] == pytest.approx(5 / 8)

    # As the DDP gather presents it: two ranks' states concatenated into one tensor, rank 1 repeating image 1.
    rank0, rank1 = ClassificationMetric(ANIMALS), ClassificationMetric(ANIMALS)
    rank0.update(*_classification_batch(ANIMAL_CASE[:4]))
    monkeypatch.setattr(classification_metric, "process_rank", lambda: 1)
    rank1.update(*_classification_batch(ANIMAL_CASE[4:], first_id=5))
    rank1.update(*_classification_batch(ANIMAL_CASE[:1]))
    rank0.rows = torch.cat([*rank0.rows, *rank1.rows])
    assert rank0.compute() == pytest.approx(expected, abs=1e-12)


def test_classification_rejects_unknown_classes_and_mismatched_images() -> None:
    metric = ClassificationMetric(ANIMALS)
    with pytest.raises(ValueError, match="category id 4"):
        metric.update([_scores(1, 3)], [ClassificationTarget(1, 4, (8, 8))])
    with pytest.raises(ValueError, match="paired"):
        metric.update([_scores(1, 3)], [ClassificationTarget(2, 3, (8, 8))])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert ClassificationMetric(ANIMALS).compute()["accuracy"] == 0.0  # nothing seen


# --- Semantic segmentation ---------------------------------------------------------------------

SCENE = [Category(1, "road"), Category(2, "car"), Category(5, "tree"), Category(8, "sky")]
I = IGNORE_INDEX  # noqa: E741
# Image 10: one ignored pixel (predicted "tree", which must not count); "tree" is predicted once on a road pixel.
TRUTH_A = [[1, 1, 1, 2], [1, I, 2, 2]]
PRED_A = [[1, 1, 5, 2], [2, 5, 2, 1]]
# Image 11: the ignored pixel is predicted "sky", which occurs nowhere else: sky must stay absent.
TRUTH_B = [[2, 2], [1, I]]
PRED_B = [[2, 2], [1, 8]]


def _segmentation_batch(
    pairs: list[tuple[Any, Any]], first_id: int = 10
) -> tuple[list[SegmentationMap], list[SegmentationTarget]]:
    predictions = [SegmentationMap(first_id + i, torch.tensor(pred)) for i, (_, pred) in enumerate(pairs)]
    targets = [
        SegmentationTarget(first_id + i, torch.tensor(truth), tuple(np.shape(truth))) for i, (truth, _) in enumerate(pairs)
    ]
    return predictions, targets


def test_semantic_segmentation_known_answer() -> None:
    metric = SemanticSegmentationMetric(SCENE)
    metric.update(*_segmentation_batch([(TRUTH_A, PRED_A), (TRUTH_B, PRED_B)]))
    # Rows truth (road, car, tree, sky), columns predicted; the two ignored pixels count nowhere.
    assert metric.confusion_matrix().tolist() == [[3, 1, 1, 0], [1, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    values = metric.compute()
    # road: 3 / (5 + 4 - 3); car: 4 / (5 + 5 - 4); tree: predicted once, never true -> 0, counted;
    # sky: neither true nor predicted -> NaN, left out of the mean.
    assert values["iou/road"] == pytest.approx(0.5)
    assert values["iou/car"] == pytest.approx(2 / 3)
    assert values["iou/tree"] == 0.0
    assert math.isnan(values["iou/sky"])
    assert values["miou"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert values["pixel_accuracy"] == pytest.approx(7 / 10)
    assert values["mean_accuracy"] == pytest.approx((3 / 5 + 4 / 5) / 2)  # tree and sky have no true pixels
    assert set(values) == {"miou", "pixel_accuracy", "mean_accuracy", "iou/road", "iou/car", "iou/tree", "iou/sky"}


def test_semantic_segmentation_honours_ignore_index() -> None:
    reference = SemanticSegmentationMetric(SCENE)
    reference.update(*_segmentation_batch([(TRUTH_A, PRED_A)]))
    # Whatever is predicted on ignored pixels (even a value that is no category) changes nothing.
    other = SemanticSegmentationMetric(SCENE)
    other.update(*_segmentation_batch([(TRUTH_A, [[1, 1, 5, 2], [2, 77, 2, 1]])]))
    assert torch.equal(other.confusion_matrix(), reference.confusion_matrix())
    assert int(reference.confusion_matrix().sum()) == 7  # 8 pixels, one ignored
    # Another ignore value: 0 marks unlabelled pixels, 255 would then be an unknown class.
    relabelled = SemanticSegmentationMetric(SCENE, ignore_index=0)
    relabelled.update(*_segmentation_batch([([[1, 1, 1, 2], [1, 0, 2, 2]], PRED_A)]))
    assert torch.equal(relabelled.confusion_matrix(), reference.confusion_matrix())
    with pytest.raises(ValueError, match=r"ground-truth mask values \[255\]"):
        relabelled.update(*_segmentation_batch([(TRUTH_A, PRED_A)]))
    with pytest.raises(ValueError, match=r"predicted mask values \[3\]"):
        reference.update(*_segmentation_batch([(TRUTH_A, [[1, 1, 3, 2], [2, 5, 2, 1]])]))
    with pytest.raises(ValueError, match=r"predicted mask values \[255\]"):  # ignore_index is no prediction
        reference.update(*_segmentation_batch([(TRUTH_A, [[1, 1, I, 2], [2, 5, 2, 1]])]))
    with pytest.raises(ValueError, match="differ in size"):
        reference.update(*_segmentation_batch([(TRUTH_A, [[1, 1], [1, 1]])]))


def _hf_mean_iou(predictions: list[np.ndarray], labels: list[np.ndarray], num_labels: int, ignore_index: int) -> dict[str, Any]:
    """Hugging Face ``evaluate``'s ``mean_iou`` (metrics/mean_iou/mean_iou.py), transcribed: histograms summed over images."""
    total_intersect = np.zeros(num_labels)
    total_union = np.zeros(num_labels)
    total_label = np.zeros(num_labels)
    for pred_label, label in zip(predictions, labels, strict=True):
        mask = np.not_equal(label, ignore_index)
        pred_label, label = pred_label[mask], label[mask]
        intersect = pred_label[pred_label == label]
        area_intersect = np.histogram(intersect, bins=num_labels, range=(0, num_labels - 1))[0]
        area_pred_label = np.histogram(pred_label, bins=num_labels, range=(0, num_labels - 1))[0]
        area_label = np.histogram(label, bins=num_labels, range=(0, num_labels - 1))[0]
        total_intersect += area_intersect
        total_union += area_pred_label + area_label - area_intersect
        total_label += area_label
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = total_intersect / total_union
        accuracy = total_intersect / total_label
    return {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(accuracy), "overall_accuracy": total_intersect.sum() / total_label.sum(),
            "per_category_iou": iou}  # fmt: skip


def test_semantic_segmentation_equals_hf_evaluate_mean_iou() -> None:
    rng = np.random.default_rng(1)
    num_classes = 6  # classes 0..5 (ids equal indices, as HF expects); class 5 never occurs
    categories = [Category(i, f"class{i}") for i in range(num_classes)]
    truths, predictions = [], []
    for _ in range(5):
        truth = rng.integers(0, 4, (12, 9))
        truth[rng.random(truth.shape) < 0.1] = IGNORE_INDEX
        prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 5, truth.shape))  # class 4: predicted only
        prediction[prediction == IGNORE_INDEX] = 0
        truths.append(truth)
        predictions.append(prediction)
    metric = SemanticSegmentationMetric(categories)
    metric.update(*_segmentation_batch(list(zip(truths, predictions, strict=True))))
    values = metric.compute()
    expected = _hf_mean_iou(predictions, truths, num_classes, IGNORE_INDEX)
    assert values["miou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert values["mean_accuracy"] == pytest.approx(expected["mean_accuracy"], abs=1e-12)
    assert values["pixel_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    ious = [values[f"iou/class{i}"] for i in range(num_classes)]
    np.testing.assert_allclose(ious, expected["per_category_iou"], atol=1e-12)
    assert values["iou/class4"] == 0.0 and math.isnan(values["iou/class5"])
    # And torchmetrics' confusion matrix over all pixels at once is the metric's.
    reference = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    for truth, prediction in zip(truths, predictions, strict=True):
        reference.update(torch.from_numpy(prediction).flatten(), torch.from_numpy(truth).flatten())
    assert torch.equal(metric.confusion_matrix(), reference.compute().long())


def test_segmentation_scores_of_an_empty_matrix_are_nan() -> None:
    values = segmentation_scores(np.zeros((2, 2)), ["a", "b"])
    assert all(math.isnan(v) for v in values.values())


def test_semantic_segmentation_counts_a_repeated_image_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = [(TRUTH_A, PRED_A), (TRUTH_B, PRED_B)]
    once = SemanticSegmentationMetric(SCENE)
    once.update(*_segmentation_batch(pairs))
    expected = once.confusion_matrix()
    twice = SemanticSegmentationMetric(SCENE)
    twice.update(*_segmentation_batch(pairs))
    twice.update(*_segmentation_batch(pairs[:1]))  # image 10 again
    assert torch.equal(twice.confusion_matrix(), expected)
    assert twice.compute() == pytest.approx(once.compute(), nan_ok=True)
    # Two ranks' gathered states, rank 1 repeating image 10.
    rank0, rank1 = SemanticSegmentationMetric(SCENE), SemanticSegmentationMetric(SCENE)
    rank0.update(*_segmentation_batch(pairs[:1]))
    monkeypatch.setattr(segmentation_metric, "process_rank", lambda: 1)
    rank1.update(*_segmentation_batch(pairs[1:], first_id=11))
    rank1.update(*_segmentation_batch(pairs[:1]))
    rank0.image_rows = torch.cat([*rank0.image_rows, *rank1.image_rows])
    rank0.cell_rows = torch.cat([*rank0.cell_rows, *rank1.cell_rows])
    assert torch.equal(rank0.confusion_matrix(), expected)


# --- Instance segmentation: COCO segm ----------------------------------------------------------

SHAPES = [Category(1, "cell"), Category(2, "blob")]
SCALE = 4  # the shapes below are drawn on a 1/4 grid; scaled up, they span COCO's small, medium and large ranges
IMAGE_SIZES = {
    1: (60 * SCALE, 80 * SCALE),
    2: (50 * SCALE, 50 * SCALE),
    3: (40 * SCALE, 70 * SCALE),
}  # id -> (h, w); 3 has no ground truth


def _box_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed_rle(binary: np.ndarray) -> dict[str, Any]:
    """A crowd annotation's RLE as COCO files hold it: column-major run lengths, starting with zeros."""
    flat = binary.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"counts": runs, "size": list(binary.shape)}


def _ground_truth_annotations() -> list[dict[str, Any]]:
    crowd = np.zeros(IMAGE_SIZES[1], dtype=np.uint8)
    crowd[34 * SCALE : 56 * SCALE, 42 * SCALE : 78 * SCALE] = 1
    annotations = [
        (1, 1, [[10, 10, 40, 10, 25, 40]], 0),  # a triangle, medium
        (1, 1, [_box_polygon(50, 5, 75, 30)], 0),  # large
        (1, 2, [_box_polygon(5, 45, 20, 58), _box_polygon(25, 45, 35, 55)], 0),  # two parts, one object
        (1, 2, crowd, 1),  # a crowd of blobs, as an uncompressed RLE
        (2, 2, [[25, 5, 35, 8, 42, 18, 42, 30, 35, 40, 25, 44, 15, 40, 8, 30, 8, 18, 15, 8]], 0),
        (2, 1, [_box_polygon(30, 30, 45, 45)], 0),
        (2, 1, [_box_polygon(1, 1, 3.5, 3)], 0),  # small: under 32 x 32 pixels
        (2, 2, [_box_polygon(44, 2, 48, 9)], 0),  # small
    ]
    records = []
    for image_id, category_id, shape, iscrowd in annotations:
        height, width = IMAGE_SIZES[image_id]
        if isinstance(shape, np.ndarray):
            segmentation = _uncompressed_rle(shape)
        else:
            segmentation = [[v * SCALE for v in polygon] for polygon in shape]
        rle = _rle(segmentation, height, width)
        records.append({"id": len(records) + 1, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
                        "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": iscrowd})  # fmt: skip
    return records


def _rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.frPyObjects(segmentation, height, width)


def _encode(binary: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _noisy_mask_detections(annotations: list[dict[str, Any]], seed: int) -> list[Detections]:
    """Shifted and eroded copies of the ground-truth masks, some with the wrong class, detections on the crowd, false positives."""
    rng = np.random.default_rng(seed)
    per_image: dict[int, list[tuple[np.ndarray, int, float]]] = {image_id: [] for image_id in IMAGE_SIZES}
    for annotation in annotations:
        height, width = IMAGE_SIZES[annotation["image_id"]]
        binary = mask_utils.decode(_rle(annotation["segmentation"], height, width))
        if annotation["iscrowd"]:  # two detections inside the crowd region: neither hits nor misses
            for y, x in ((36, 44), (44, 60)):
                part = np.zeros_like(binary)
                part[y * SCALE : (y + 8) * SCALE, x * SCALE : (x + 12) * SCALE] = 1
                per_image[annotation["image_id"]].append((part, annotation["category_id"], float(rng.random())))
            continue
        shift = max(1, int(np.sqrt(annotation["area"]) * 0.15))  # a few pixels for small objects, more for large ones
        shifted = np.roll(binary, (int(rng.integers(-shift, shift + 1)), int(rng.integers(-shift, shift + 1))), axis=(0, 1))
        if rng.random() < 0.3:  # erode: lower IoU
            shifted = shifted & np.roll(shifted, shift, axis=0) & np.roll(shifted, shift, axis=1)
        category_id = int(rng.choice([1, 2])) if rng.random() < 0.2 else annotation["category_id"]
        per_image[annotation["image_id"]].append((shifted, category_id, float(rng.random())))
    for image_id, (height, width) in IMAGE_SIZES.items():  # false positives
        for _ in range(2):
            y, x = int(rng.integers(0, height - 12 * SCALE)), int(rng.integers(0, width - 12 * SCALE))
            spurious = np.zeros((height, width), dtype=np.uint8)
            spurious[y : y + int(rng.integers(3, 12 * SCALE)), x : x + int(rng.integers(3, 12 * SCALE))] = 1
            per_image[image_id].append((spurious, int(rng.choice([1, 2])), float(rng.random())))
    detections = []
    for image_id, items in per_image.items():
        masks = [_encode(binary) for binary, _, _ in items]
        boxes = [mask_utils.toBbox(_rle_bytes(m)).tolist() for m in masks]
        # Scores and boxes already as the results json rounds them, so both sides see identical numbers.
        detections.append(Detections(
            image_id, torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            torch.tensor([round(score, 5) for _, _, score in items], dtype=torch.float64),
            torch.tensor([category for _, category, _ in items], dtype=torch.int64), masks,
        ))  # fmt: skip
    return detections


def _rle_bytes(rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def _mask_targets(annotations: list[dict[str, Any]], binary_masks: bool, crowd_as_crowd: bool = True) -> list[DetectionTarget]:
    targets = []
    for image_id, (height, width) in IMAGE_SIZES.items():
        records = [a for a in annotations if a["image_id"] == image_id]
        target = DetectionTarget(
            image_id, torch.tensor([a["bbox"] for a in records], dtype=torch.float32).reshape(-1, 4),
            torch.tensor([a["category_id"] for a in records], dtype=torch.int64),
            torch.tensor([a["iscrowd"] if crowd_as_crowd else 0 for a in records], dtype=torch.int64),
            torch.tensor([a["area"] for a in records], dtype=torch.float32), (height, width), f"{image_id}.png",
        )  # fmt: skip
        if binary_masks:  # what the COCO dataset gives with with_masks: (N, H, W) booleans
            decoded = [mask_utils.decode(_rle(a["segmentation"], height, width)).astype(bool) for a in records]
            target.masks = torch.from_numpy(np.stack(decoded) if decoded else np.zeros((0, height, width), dtype=bool))
        else:  # polygons and RLEs as in the annotation file
            target.masks = [a["segmentation"] for a in records]
        targets.append(target)
    return targets


def _write_coco_files(tmp_path: Path, annotations: list[dict[str, Any]], detections: list[Detections]) -> tuple[Path, Path]:
    ground_truth = {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, (h, w) in IMAGE_SIZES.items()],
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name} for c in SHAPES],
    }
    annotation_file, results_file = tmp_path / "annotations.json", tmp_path / "results.json"
    annotation_file.write_text(json.dumps(ground_truth))
    results_file.write_text(json.dumps([row for d in detections for row in d.to_coco_results()]))
    return annotation_file, results_file


def _pycocotools(annotation_file: Path, results_file: Path, iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO(str(annotation_file))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_file)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("binary_masks", [False, True], ids=["polygons-and-rle", "binary-tensor"])
def test_mask_metrics_equal_pycocotools_segm(tmp_path: Path, binary_masks: bool) -> None:
    annotations = _ground_truth_annotations()
    detections = _noisy_mask_detections(annotations, seed=0)
    annotation_file, results_file = _write_coco_files(tmp_path, annotations, detections)
    metric = CocoInstanceSegmentationMetric(SHAPES)
    metric.update(detections, _mask_targets(annotations, binary_masks))
    values = metric.compute()
    for iou_type, names, prefix in (("segm", MASK_STAT_NAMES, "mask_"), ("bbox", COCO_STAT_NAMES, "")):
        evaluator = _pycocotools(annotation_file, results_file, iou_type)
        for name, expected in zip(names, evaluator.stats, strict=True):
            assert values[name] == pytest.approx(expected, abs=1e-6), name
        for category in SHAPES:
            precision = evaluator.eval["precision"][:, :, evaluator.params.catIds.index(category.id), 0, -1]
            valid = precision[precision > -1]
            assert values[f"{prefix}ap/{category.name}"] == pytest.approx(valid.mean() if valid.size else -1.0, abs=1e-6)
    assert 0.1 < values["mask_map_50"] < 0.99 and values["mask_map"] != pytest.approx(values["map"])  # a non-trivial case
    # The box numbers are the detection metric's.
    boxes_only = CocoDetectionMetric(SHAPES)
    boxes_only.update(detections, _mask_targets(annotations, binary_masks))
    assert {k: v for k, v in values.items() if not k.startswith("mask_")} == pytest.approx(boxes_only.compute(), abs=1e-12)


def test_mask_metrics_handle_crowds_and_repeated_images() -> None:
    annotations = _ground_truth_annotations()
    detections = _noisy_mask_detections(annotations, seed=2)
    targets = _mask_targets(annotations, binary_masks=False)
    once = CocoInstanceSegmentationMetric(SHAPES)
    once.update(detections, targets)
    expected = once.compute()
    # The crowd region matters: read as an ordinary object, it turns the detections on it into misses.
    no_crowd = CocoInstanceSegmentationMetric(SHAPES)
    no_crowd.update(detections, _mask_targets(annotations, binary_masks=False, crowd_as_crowd=False))
    assert no_crowd.compute()["mask_map"] != pytest.approx(expected["mask_map"], abs=1e-4)
    # An image repeated (in a later batch, and within one) counts once.
    twice = CocoInstanceSegmentationMetric(SHAPES)
    twice.update(detections, targets)
    twice.update(detections[:1], targets[:1])
    assert twice.compute() == pytest.approx(expected, abs=1e-12)
    repeated = CocoInstanceSegmentationMetric(SHAPES)
    repeated.update(detections + detections[:2], targets + targets[:2])
    assert repeated.compute() == pytest.approx(expected, abs=1e-12)


def test_mask_metrics_need_masks() -> None:
    annotations = _ground_truth_annotations()
    detections = _noisy_mask_detections(annotations, seed=0)
    targets = _mask_targets(annotations, binary_masks=False)
    targets[0].masks = None
    metric = CocoInstanceSegmentationMetric(SHAPES)
    with pytest.raises(ValueError, match="ground truth of image 1 have no masks"):
        metric.update(detections, targets)
    targets = _mask_targets(annotations, binary_masks=False)
    detections[1].masks[0] = _encode(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"detections of image 2: a mask of size \[10, 10\]"):
        metric.update(detections, targets)
    assert metric.compute()["mask_map"] == 0.0  # the failed batches left nothing behind


# --- Real DDP: two gloo processes, the sampler's padding repeating images -----------------------


def _ddp_worker(rank: int, world_size: int, port: int, results: dict[int, Any]) -> None:
    """One rank: its share of the images as DistributedSampler deals them (padded by repeating the first ones)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        annotations = _ground_truth_annotations()
        detections, targets = _noisy_mask_detections(annotations, seed=0), _mask_targets(annotations, binary_masks=True)
        masks = CocoInstanceSegmentationMetric(SHAPES)
        share = [0, 1, 2, 0][rank::world_size]  # 3 images on 2 ranks: image 1 twice
        masks.update([detections[i] for i in share], [targets[i] for i in share])
        classes = ClassificationMetric(ANIMALS)
        predictions, truths = _classification_batch(ANIMAL_CASE + ANIMAL_CASE[:2])  # images 1..6, then 1, 2 again
        truths[6].image_id = predictions[6].image_id = 1
        truths[7].image_id = predictions[7].image_id = 2
        classes.update(predictions[rank::world_size], truths[rank::world_size])
        pixels = SemanticSegmentationMetric(SCENE)
        segmentation_maps, segmentation_targets = _segmentation_batch([(TRUTH_A, PRED_A), (TRUTH_B, PRED_B), (TRUTH_A, PRED_A)])
        segmentation_maps[2].image_id = segmentation_targets[2].image_id = 10
        share = [0, 2] if rank == 0 else [1]
        pixels.update([segmentation_maps[i] for i in share], [segmentation_targets[i] for i in share])
        results[rank] = {"masks": masks.compute(), "classes": classes.compute(), "class_matrix": classes.confusion_matrix().tolist(),
                         "pixels": pixels.compute(), "pixel_matrix": pixels.confusion_matrix().tolist()}  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


def test_metrics_gather_and_deduplicate_under_ddp() -> None:
    """States (rows, sparse confusion cells, mask bytes) gathered across two processes give the single-process numbers on every rank."""
    annotations = _ground_truth_annotations()
    masks = CocoInstanceSegmentationMetric(SHAPES)
    masks.update(_noisy_mask_detections(annotations, seed=0), _mask_targets(annotations, binary_masks=True))
    classes = ClassificationMetric(ANIMALS)
    classes.update(*_classification_batch(ANIMAL_CASE))
    pixels = SemanticSegmentationMetric(SCENE)
    pixels.update(*_segmentation_batch([(TRUTH_A, PRED_A), (TRUTH_B, PRED_B)]))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with torch.multiprocessing.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.spawn(_ddp_worker, args=(2, port, results), nprocs=2)
        results = dict(results)
    for rank in (0, 1):
        assert results[rank]["masks"] == pytest.approx(masks.compute(), abs=1e-12)
        assert results[rank]["classes"] == pytest.approx(classes.compute(), abs=1e-12)
        assert results[rank]["class_matrix"] == classes.confusion_matrix().tolist()
        assert results[rank]["pixels"] == pytest.approx(pixels.compute(), nan_ok=True)
        assert results[rank]["pixel_matrix"] == pixels.confusion_matrix().tolist()
