"""COCO dataset, DataModule, synthetic generator and bad-input handling, on real images."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvexp.data import CocoDetectionDataset, CocoSplit, VisionDataModule
from cvexp.data.images import load_rgb_image
from cvexp.data.shapes import ANNOTATION_FILE, SyntheticShapes
from tests.conftest import RBC_CELLS, needs_rbc


def write_coco(folder: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> CocoSplit:
    """Writes real PNG images (one colour each) and their COCO json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        if not image.pop("missing", False):
            Image.new("RGB", (image["width"], image["height"]), (120, 30, 200)).save(folder / image["file_name"])
    categories = categories or [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    (folder / ANNOTATION_FILE).write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoSplit(images_dir=str(folder))


def image(image_id: int, **extra) -> dict:
    return {"id": image_id, "file_name": f"img{image_id}.png", "width": 64, "height": 48, **extra}


def box(annotation_id: int, image_id: int, bbox: list[float], category_id: int = 1, **extra) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


# --- the real RBC cells data -------------------------------------------------------------


@needs_rbc
def test_rbc_cells_train_split_loads_with_its_own_category_ids() -> None:
    dataset = CocoDetectionDataset(str(RBC_CELLS / "train"))
    assert len(dataset) == 210
    # Category 0 is an unused supercategory: left out, and the rest map to contiguous 0..K-1.
    assert [(c.id, c.name) for c in dataset.label_map.categories] == [(1, "rbc"), (2, "wbc")]
    assert dataset.label_map.id2label == {0: "rbc", 1: "wbc"}
    sample = dataset[0]
    assert sample.image.shape == (416, 416, 3) and sample.image.dtype == np.uint8
    assert set(sample.target.category_ids.tolist()) <= {1, 2}
    assert sum(len(dataset[i].target.boxes) for i in range(len(dataset))) == 4947


@needs_rbc
def test_rbc_cells_datamodule_batches_through_a_collator() -> None:
    from transformers import ConditionalDetrImageProcessorPil

    from cvexp.adapters import SigmoidDetrAdapter
    from cvexp.data import BatchCollator
    from cvexp.data.pixels import TorchPixels

    datamodule = VisionDataModule(CocoDetectionDataset, root=str(RBC_CELLS), train={"images_dir": "train"}, val={"images_dir": "valid"},
                                         test={"images_dir": "test"}, batch_size=3, image_size=128)  # fmt: skip
    adapter = SigmoidDetrAdapter(datamodule.label_map)
    datamodule.collate_fn = BatchCollator(TorchPixels(ConditionalDetrImageProcessorPil(), 128), adapter)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["pixel_values"].shape == (3, 3, 128, 128)
    assert len(datamodule.datasets["val"]) == 20 and len(datamodule.datasets["test"]) == 10
    labels = batch["labels"][0]
    assert labels["boxes"].min() >= 0 and labels["boxes"].max() <= 1
    assert set(labels["class_labels"].tolist()) <= {0, 1}


# --- the synthetic generator -------------------------------------------------------------


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_synthetic_shapes_are_deterministic_and_written_once(tmp_path: Path) -> None:
    first, second = SyntheticShapes(str(tmp_path / "a"), num_train=12, num_val=4, num_test=4), SyntheticShapes(str(tmp_path / "b"), num_train=12, num_val=4, num_test=4)
    first(), second()
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    mtime = (tmp_path / "a" / "train" / ANNOTATION_FILE).stat().st_mtime_ns
    first()  # second call: nothing rewritten
    assert (tmp_path / "a" / "train" / ANNOTATION_FILE).stat().st_mtime_ns == mtime
    SyntheticShapes(str(tmp_path / "c"), num_train=12, num_val=4, num_test=4, seed=1)()
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_synthetic_shapes_boxes_cover_the_drawn_pixels(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path), num_train=10, num_val=2, num_test=2)()
    dataset = CocoDetectionDataset(str(tmp_path / "train"))
    assert [c.name for c in dataset.label_map.categories] == ["circle", "square", "triangle"]
    for index in range(len(dataset)):
        sample = dataset[index]
        assert len(sample.target.boxes) >= 1
        for x, y, w, h in sample.target.boxes.tolist():
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
            inside = sample.image[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2].reshape(-1, 3).astype(int)
            background = sample.image[0:2, 0:2].reshape(-1, 3).astype(int).mean(0)
            # The shape's fill differs from the background somewhere inside its box.
            assert np.abs(inside - background).sum(1).max() > 100


@pytest.mark.parametrize("augmentation", ["basic", "strong"])
def test_cached_images_are_decoded_once_and_survive_augmentation(tmp_path: Path, augmentation: str) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    SyntheticShapes(str(tmp_path / "shapes"), num_train=6, num_val=2, num_test=2)()
    transform = instantiate(compose_train_config(tmp_path, tmp_path, [f"augmentation={augmentation}"]).augmentation)
    split = CocoSplit(str(tmp_path / "shapes" / "train"))
    cached = CocoDetectionDataset(**vars(split), transform=transform, cache_images=True)
    plain = CocoDetectionDataset(**vars(split))
    for _epoch in range(3):
        for index in range(len(cached)):
            cached[index]  # the transform must not write into the cached pixels
    for index in range(len(cached)):
        image_id = cached.image_ids[index]
        assert np.array_equal(cached._image_cache[image_id], plain[index].image)  # unchanged after 3 epochs
        assert cached._load_image(image_id) is cached._image_cache[image_id]  # not read again


# --- images -----------------------------------------------------------------------------


def test_grayscale_rgba_palette_and_exif_rotated_images_load_as_upright_rgb(tmp_path: Path) -> None:
    Image.new("L", (30, 20), 128).save(tmp_path / "gray.png")
    rgba = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    Image.new("P", (30, 20), 3).save(tmp_path / "palette.png")
    rotated = Image.new("RGB", (30, 20), (0, 255, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated.save(tmp_path / "rotated.jpg", exif=exif.tobytes())

    gray = load_rgb_image(tmp_path / "gray.png")
    assert gray.shape == (20, 30, 3) and (gray == 128).all()
    transparent = load_rgb_image(tmp_path / "rgba.png")
    assert transparent.shape == (20, 30, 3) and (transparent == 255).all()  # composited on white, not red
    assert load_rgb_image(tmp_path / "palette.png").shape == (20, 30, 3)
    assert load_rgb_image(tmp_path / "rotated.jpg").shape == (30, 20, 3)  # upright: portrait


def test_images_without_annotations_are_kept(tmp_path: Path) -> None:
    split = write_coco(tmp_path, [image(1), image(2)], [box(1, 1, [5, 5, 10, 10])])
    dataset = CocoDetectionDataset(**vars(split))
    assert len(dataset) == 2
    empty = dataset[1].target
    assert empty.boxes.shape == (0, 4) and empty.category_ids.shape == (0,)


def test_crowd_boxes_reach_evaluation_but_not_the_loss(tmp_path: Path) -> None:
    from cvexp.adapters import DetrAdapter

    split = write_coco(tmp_path, [image(1)], [box(1, 1, [5, 5, 10, 10]), box(2, 1, [20, 5, 10, 10], iscrowd=1)])
    dataset = CocoDetectionDataset(**vars(split))
    target = dataset[0].target
    assert target.iscrowd.tolist() == [0, 1] and len(target.boxes) == 2  # COCO evaluation sees both
    labels = DetrAdapter(dataset.label_map).adapt_targets([target])[0]
    assert len(labels["boxes"]) == 1  # the loss sees only the non-crowd box


# --- bad input: tests/test_damaged_data.py (a corpus of damaged datasets under both policies) ---


def test_clean_data_raises_no_warning(tmp_path: Path) -> None:
    split = write_coco(tmp_path, [image(1)], [box(1, 1, [0, 0, 64, 48])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDetectionDataset(**vars(split))
