"""Boxes stay on their objects through every augmentation pipeline of the config group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from cvexp.data.augmentation import detection_compose
from cvexp.paths import CONFIG_DIR
from tests.conftest import compose_train_config

AUGMENTATIONS = sorted(p.stem for p in (CONFIG_DIR / "augmentation").glob("*.yaml"))


def _mask_box(mask: np.ndarray, object_id: int) -> list[float] | None:
    ys, xs = np.nonzero(mask == object_id)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_boxes_follow_the_pixels(tmp_path: Path, augmentation: str) -> None:
    cfg = compose_train_config(tmp_path, tmp_path, [f"augmentation={augmentation}"])
    transform = instantiate(cfg.augmentation).for_boxes()
    # albumentations draws from a generator of its own (the DataModule seeds it in training):
    # seeded here too, so that the test checks the same 40 draws on every run.
    transform.set_random_seed(0)
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(40):
        # Filled rectangles, each painted with its id in a mask that the transform moves too.
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        mask = np.zeros((96, 128), dtype=np.uint8)
        boxes = [[10.0, 12.0, 30.0, 20.0], [60.0, 40.0, 25.0, 35.0], [95.0, 5.0, 20.0, 15.0]]
        for object_id, (x, y, w, h) in enumerate(boxes, start=1):
            mask[int(y) : int(y + h), int(x) : int(x + w)] = object_id
        out = transform(image=image, mask=mask, bboxes=np.array(boxes), category_ids=np.array([1, 2, 1]), annotation_indices=np.arange(3))
        assert out["image"].shape[2] == 3
        for moved_box, index in zip(out["bboxes"], out["annotation_indices"], strict=True):
            expected = _mask_box(out["mask"], int(index) + 1)
            assert expected is not None, f"{augmentation}: box {index} kept but its object left the image"
            assert _iou(list(map(float, moved_box)), expected) > 0.85, (augmentation, trial, moved_box, expected)
            checked += 1
        assert list(out["category_ids"]) == [[1, 2, 1][int(i)] for i in out["annotation_indices"]]
    assert checked >= 40


def test_boxes_mostly_cut_off_are_dropped() -> None:
    import albumentations as A

    transform = detection_compose([A.Crop(x_min=0, y_min=0, x_max=50, y_max=50)], min_visibility=0.3)
    out = transform(image=np.zeros((100, 100, 3), np.uint8), bboxes=np.array([[10, 10, 20, 20], [45, 45, 40, 40]]),
                    category_ids=np.array([1, 2]), annotation_indices=np.arange(2))  # fmt: skip
    assert list(out["annotation_indices"]) == [0]
