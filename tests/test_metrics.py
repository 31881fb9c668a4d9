"""COCO metrics: cvexp's numbers equal pycocotools' COCOeval on the same detections."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval

from cvexp.adapters import Detections
from cvexp.data import CocoDetectionDataset
from cvexp.evaluation.coco_metric import COCO_STAT_NAMES, CocoDetectionMetric, coco_ground_truth
from tests.conftest import RBC_CELLS, needs_rbc


def _noisy_detections(dataset: CocoDetectionDataset, seed: int) -> list[Detections]:
    """Jittered copies of the ground truth, some with the wrong class, plus random false positives."""
    rng = np.random.default_rng(seed)
    category_ids = [c.id for c in dataset.label_map.categories]
    detections = []
    for index in range(len(dataset)):
        target = dataset[index].target
        boxes = target.boxes.numpy() + rng.normal(0, 3, target.boxes.shape)
        labels = np.where(rng.random(len(boxes)) < 0.1, rng.choice(category_ids, len(boxes)), target.category_ids.numpy())
        height, width = target.size
        extra = rng.uniform(0, min(height, width) / 2, (5, 4))
        boxes = np.concatenate([boxes, extra])
        labels = np.concatenate([labels, rng.choice(category_ids, 5)])
        scores = rng.random(len(boxes))
        detections.append(Detections(target.image_id, torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)))
    return detections


def _pycocotools_stats(ground_truth: dict, detections: list[Detections]) -> np.ndarray:
    results = [row for d in detections for row in d.to_coco_results()]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _metric_values(dataset: CocoDetectionDataset, detections: list[Detections]) -> dict[str, float]:
    metric = CocoDetectionMetric(dataset.label_map.categories)
    for index, detection in enumerate(detections):
        # Same rounding as the results json, so both sides see identical numbers.
        rows = detection.to_coco_results()
        rounded = Detections(detection.image_id, torch.tensor([r["bbox"] for r in rows], dtype=torch.float64).reshape(-1, 4),
                             torch.tensor([r["score"] for r in rows], dtype=torch.float64), detection.category_ids)  # fmt: skip
        metric.update([rounded], [dataset[index].target])
    return metric.compute()


@needs_rbc
def test_metric_equals_pycocotools_on_rbc_cells() -> None:
    dataset = CocoDetectionDataset(str(RBC_CELLS / "valid"))
    detections = _noisy_detections(dataset, seed=0)
    ground_truth = coco_ground_truth([dataset[i].target for i in range(len(dataset))], dataset.label_map.categories)
    expected = _pycocotools_stats(ground_truth, detections)
    values = _metric_values(dataset, detections)
    for name, value in zip(COCO_STAT_NAMES, expected, strict=True):
        assert values[name] == pytest.approx(value, abs=1e-6), name
    assert 0.1 < values["map_50"] < 0.99  # a non-trivial case
    assert set(values) >= {"ap/rbc", "ap/wbc"}


def test_perfect_detections_score_one_and_none_score_zero(tmp_path: Path) -> None:
    from cvexp.data.shapes import SyntheticShapes

    SyntheticShapes(str(tmp_path), num_train=2, num_val=8, num_test=2)()
    dataset = CocoDetectionDataset(str(tmp_path / "val"))
    perfect = [Detections(t.image_id, t.boxes, torch.ones(len(t.boxes)), t.category_ids) for t in (dataset[i].target for i in range(len(dataset)))]
    values = _metric_values(dataset, perfect)
    assert values["map"] == pytest.approx(1.0) and values["map_50"] == pytest.approx(1.0)
    empty = [Detections(d.image_id, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)) for d in perfect]
    assert _metric_values(dataset, empty)["map"] == 0.0


def test_first_annotation_with_id_zero_is_matched(tmp_path: Path) -> None:
    # pycocotools reads a matched ground-truth id of 0 as "no match"; RBC cells starts its ids at 0.
    from tests.test_data import box, image, write_coco

    split = write_coco(tmp_path, [image(0)], [box(0, 0, [5, 5, 20, 20])])
    dataset = CocoDetectionDataset(**vars(split))
    t = dataset[0].target
    values = _metric_values(dataset, [Detections(t.image_id, t.boxes, torch.ones(1), t.category_ids)])
    assert values["map_50"] == pytest.approx(1.0)


@needs_rbc
def test_an_image_seen_twice_is_counted_once() -> None:
    """Under DDP the sampler repeats images to even out the ranks; the metric keeps each image's first occurrence."""
    dataset = CocoDetectionDataset(str(RBC_CELLS / "test"))
    detections = _noisy_detections(dataset, seed=3)
    targets = [dataset[i].target for i in range(len(dataset))]
    once, twice = CocoDetectionMetric(dataset.label_map.categories), CocoDetectionMetric(dataset.label_map.categories)
    once.update(detections, targets)
    twice.update(detections, targets)
    twice.update(detections[:3], targets[:3])  # the padding: three images again
    expected = once.compute()
    assert expected["map"] > 0.1
    assert twice.compute() == pytest.approx(expected, abs=1e-12)
    # Counting a repeated image's boxes and detections twice (what the metric did before) gives other numbers.
    from cvexp.evaluation.coco_metric import evaluate_coco

    doubled_targets = [
        type(t)(t.image_id, torch.cat([t.boxes, t.boxes]), torch.cat([t.category_ids, t.category_ids]), torch.cat([t.iscrowd, t.iscrowd]),
                torch.cat([t.area, t.area]), t.size, t.file_name) if i < 3 else t
        for i, t in enumerate(targets)
    ]  # fmt: skip
    doubled = [Detections(d.image_id, torch.cat([d.boxes, d.boxes]), torch.cat([d.scores, d.scores]), torch.cat([d.category_ids, d.category_ids]))
               if i < 3 else d for i, d in enumerate(detections)]  # fmt: skip
    results = [row for d in doubled for row in d.to_coco_results()]
    assert evaluate_coco(coco_ground_truth(doubled_targets, dataset.label_map.categories), results, dataset.label_map.categories)["map"] != pytest.approx(expected["map"], abs=1e-4)
    repeated = CocoDetectionMetric(dataset.label_map.categories)
    repeated.update(detections + detections[:3], targets + targets[:3])
    assert repeated.compute() == pytest.approx(expected, abs=1e-12)  # in one update call too


def test_box_results_for_an_image_outside_the_ground_truth_are_refused() -> None:
    import numpy as np

    from cvexp.data.labels import Category
    from cvexp.evaluation.coco_metric import evaluate_coco

    ground_truth = {"images": [{"id": 1, "height": 10, "width": 10}], "categories": [{"id": 1, "name": "a"}],
                    "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 0, "area": 25.0}]}  # fmt: skip
    rows = np.array([[1, 0, 0, 5, 5, 0.9, 1], [7, 0, 0, 5, 5, 0.8, 1]], dtype=np.float64)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(ground_truth, rows, [Category(1, "a")])
    assert evaluate_coco(ground_truth, rows[:1], [Category(1, "a")])["map"] == pytest.approx(1.0)
