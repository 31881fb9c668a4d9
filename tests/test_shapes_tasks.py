"""The synthetic shapes for every task: classification CSV, semantic masks, instance polygons, boxes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cvexp.data.shapes import ANNOTATION_FILE, CLASSES_FILE, LABEL_KINDS, MASK_SUFFIX, SyntheticShapes

SMALL = {"num_train": 12, "num_val": 4, "num_test": 4}
SPLITS = ("train", "val", "test")

# The "boxes" output of SyntheticShapes(root, num_train=12, num_val=4, num_test=4) (seed 0, every
# other parameter at its default), computed with cvexp/data/shapes.py as of commit f108f6f, before
# the ``labels`` option existed, by the two digests below:
# - _content_digest (relative path + decoded RGB pixels of each PNG + bytes of the json), which
#   does not depend on the PNG encoder (zlib/Pillow version): checked everywhere;
# - _byte_digest (relative path + file bytes): the byte-for-byte check, made with Pillow 13.0.0
#   and numpy 2.4.6, and checked only with that Pillow (another zlib may compress differently).
BOXES_CONTENT_SHA256 = "07be1d6ae2956cd39674ed5a9c2b173a4ac9f02ebf1a762a055995811e9c29d9"
BOXES_BYTES_SHA256 = "9345b784752686f913e58ff4651dd944f34591cd235dfa576a1e752f7061ebe0"
BOXES_BYTES_PILLOW = "13.0.0"


def _files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def _byte_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _content_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(np.asarray(Image.open(path).convert("RGB")).tobytes() if path.suffix == ".png" else path.read_bytes())
    return digest.hexdigest()


def _flat(image: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood is one colour (std <= ``tolerance`` in every channel): inside a
    flat-coloured shape (JPEG ringing aside), not on the noisy background (noise std 12)."""
    padded = np.pad(image.astype(float), ((1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))
    return windows.std(axis=(-1, -2)).max(-1) <= tolerance


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    for _ in range(pixels):
        padded = np.pad(mask, 1, constant_values=False)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


# --- every kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", LABEL_KINDS)
def test_each_kind_is_deterministic_and_written_once(tmp_path: Path, labels: str) -> None:
    first = SyntheticShapes(str(tmp_path / "a"), labels=labels, **SMALL)
    first(), SyntheticShapes(str(tmp_path / "b"), labels=labels, **SMALL)()
    assert _byte_digest(tmp_path / "a") == _byte_digest(tmp_path / "b")  # same seed: same bytes
    marker = json.loads((tmp_path / "a" / ".cvexp-shapes.json").read_text())
    assert marker["labels"] == labels and marker["complete"] is True
    stamps = {p: p.stat().st_mtime_ns for p in _files(tmp_path / "a")}
    first()  # second call: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path / "a")} == stamps
    SyntheticShapes(str(tmp_path / "c"), labels=labels, seed=1, **SMALL)()
    assert _byte_digest(tmp_path / "c") != _byte_digest(tmp_path / "a")
    for split, count in zip(SPLITS, SMALL.values(), strict=True):
        images = [
            p for p in (tmp_path / "a" / split).iterdir() if p.suffix in (".png", ".jpg") and not p.name.endswith(MASK_SUFFIX)
        ]
        assert len(images) == count
        assert all(Image.open(p).size == (96, 96) for p in images)


def test_boxes_output_is_unchanged_by_the_other_kinds(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path / "default"), **SMALL)()
    SyntheticShapes(str(tmp_path / "explicit"), labels="boxes", **SMALL)()
    assert _content_digest(tmp_path / "default") == _content_digest(tmp_path / "explicit") == BOXES_CONTENT_SHA256
    if Image.__version__ == BOXES_BYTES_PILLOW:
        assert _byte_digest(tmp_path / "default") == BOXES_BYTES_SHA256


def test_switching_kind_in_one_root_regenerates_and_leaves_no_stale_file(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path), **SMALL)()
    SyntheticShapes(str(tmp_path), labels="classes", **SMALL)()
    train = tmp_path / "train"
    assert sorted(p.suffix for p in train.iterdir()) == [".csv"] + [".jpg"] * 12  # no boxes png, no COCO json
    SyntheticShapes(str(tmp_path), labels="semantic_masks", num_train=5, num_val=1, num_test=1)()
    assert len(list(train.glob("*.jpg"))) == 5 and len(list(train.glob(f"*{MASK_SUFFIX}"))) == 5
    SyntheticShapes(str(tmp_path), **SMALL)()  # back to boxes: the very same dataset
    assert _content_digest(tmp_path) == BOXES_CONTENT_SHA256


def test_an_interrupted_generation_is_redone(tmp_path: Path) -> None:
    shapes = SyntheticShapes(str(tmp_path), labels="instance_polygons", **SMALL)
    shapes()
    expected = _byte_digest(tmp_path)
    marker = tmp_path / ".cvexp-shapes.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    (tmp_path / "val" / ANNOTATION_FILE).unlink()  # as if killed half-way
    shapes()
    assert _byte_digest(tmp_path) == expected and json.loads(marker.read_text())["complete"] is True


def test_unknown_kind_and_impossible_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels='masks'"):
        SyntheticShapes(str(tmp_path), labels="masks")
    with pytest.raises(ValueError, match="object sizes"):
        SyntheticShapes(str(tmp_path), min_object_size=50, max_object_size=200)


def test_object_sizes_default_per_kind() -> None:
    assert SyntheticShapes("x").object_size_range == (14, 36)
    assert SyntheticShapes("x", labels="classes").object_size_range == (29, 77)  # 30-80 % of 96 px
    assert SyntheticShapes("x", labels="semantic_masks").object_size_range == (16, 40)
    assert SyntheticShapes("x", labels="instance_polygons", max_object_size=30).object_size_range == (16, 30)


# --- classes ------------------------------------------------------------------------------------


def test_classes_are_a_one_hot_roboflow_csv_listing_every_image(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path), labels="classes", num_train=60, num_val=4, num_test=4)()
    for split in SPLITS:
        lines = (tmp_path / split / CLASSES_FILE).read_text().splitlines()
        assert lines[0] == "filename, circle, square, triangle"
        rows = [line.split(", ") for line in lines[1:]]
        assert sorted(r[0] for r in rows) == sorted(p.name for p in (tmp_path / split).glob("*.jpg"))
        for row in rows:
            assert len(row) == 4 and sorted(row[1:]) == ["0", "0", "1"]
    train = [line.split(", ") for line in (tmp_path / "train" / CLASSES_FILE).read_text().splitlines()[1:]]
    counts = np.array([[int(v) for v in row[1:]] for row in train]).sum(0)
    assert counts.min() >= 10  # every class, roughly balanced


# --- semantic masks -----------------------------------------------------------------------------


def test_semantic_masks_follow_png_mask_semantic_and_agree_with_the_images(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path), labels="semantic_masks", num_train=20, num_val=2, num_test=2)()
    for split in SPLITS:
        assert (tmp_path / split / CLASSES_FILE).read_text().splitlines() == [
            "Pixel Value, Class", "0, background", "1, circle", "2, square", "3, triangle"]  # fmt: skip
    seen: set[int] = set()
    shape_flat, background_flat, at_edge, beside = [], [], [], []
    for path in sorted((tmp_path / "train").glob("shapes_?????.jpg")):
        mask_image = Image.open(path.with_name(path.stem + MASK_SUFFIX))
        assert mask_image.mode == "L" and mask_image.size == (96, 96)
        mask = np.asarray(mask_image)
        assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3} and mask.max() > 0
        seen |= set(np.unique(mask).tolist())
        image = np.asarray(Image.open(path).convert("RGB")).astype(int)
        for axis in (0, 1):  # the colour steps exactly where the mask steps, not a pixel off
            step = np.abs(np.diff(image, axis=axis)).sum(-1)
            edge = np.diff(mask.astype(int), axis=axis) != 0
            at_edge.append(step[edge])
            beside.append(step[np.roll(edge, 1, axis=axis) & ~edge])
            beside.append(step[np.roll(edge, -1, axis=axis) & ~edge])
        flat = _flat(image, tolerance=8)
        for value in np.unique(mask):
            # 2 px away from every class edge (JPEG ringing): shapes are flat colour, the background
            # noisy. (A class region may hold two overlapping shapes of that class, of two colours:
            # their seam is not flat, hence 99 % rather than all.)
            inside = _erode(mask == value, 2)
            (shape_flat if value else background_flat).append(flat[inside])
    assert seen == {0, 1, 2, 3}
    shape_flat, background_flat = np.concatenate(shape_flat), np.concatenate(background_flat)
    assert shape_flat.mean() > 0.98  # every shape pixel of the mask is painted with a shape's colour
    assert background_flat.mean() < 0.01  # and every background pixel of the mask is background
    # Colour differences (L1) between neighbours: large across a mask edge, small one pixel aside.
    assert np.median(np.concatenate(at_edge)) > 120 and np.median(np.concatenate(beside)) < 50


def test_semantic_shapes_overlap_in_drawing_order(tmp_path: Path) -> None:
    # Shapes may overlap, the later on top, in the mask as in the image: two touching shapes of
    # different classes, or two shapes of different colours inside one class region, occur.
    SyntheticShapes(str(tmp_path), labels="semantic_masks", num_train=40, num_val=1, num_test=1)()
    touching = 0
    for path in sorted((tmp_path / "train").glob(f"*{MASK_SUFFIX}")):
        mask = np.asarray(Image.open(path)).astype(int)
        horizontal = (mask[:, 1:] != mask[:, :-1]) & (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        vertical = (mask[1:] != mask[:-1]) & (mask[1:] > 0) & (mask[:-1] > 0)
        touching += int(horizontal.any() or vertical.any())
    assert touching >= 1


# --- instance polygons --------------------------------------------------------------------------


def test_instance_polygons_load_with_pycocotools_and_are_the_visible_pixels(tmp_path: Path) -> None:
    SyntheticShapes(str(tmp_path), labels="instance_polygons", num_train=20, num_val=2, num_test=2)()
    vertices = {"circle": 24, "square": 4, "triangle": 3}
    for split in SPLITS:
        coco = COCO(str(tmp_path / split / ANNOTATION_FILE))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            image = np.asarray(Image.open(tmp_path / split / info["file_name"]).convert("RGB"))
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(annotations) <= 4
            covered = np.zeros(image.shape[:2], dtype=int)
            for annotation in annotations:
                name = coco.loadCats(annotation["category_id"])[0]["name"]
                [polygon] = annotation["segmentation"]
                assert len(polygon) == 2 * vertices[name] and annotation["iscrowd"] == 0
                xs, ys = polygon[0::2], polygon[1::2]
                x, y, w, h = annotation["bbox"]
                assert (x, y) == (min(xs), min(ys)) and np.allclose([x + w, y + h], [max(xs), max(ys)])
                assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
                assert max(w, h) >= 15.9  # large enough to segment at 96 px
                mask = coco.annToMask(annotation).astype(bool)
                assert mask.sum() == annotation["area"] > 0
                covered += mask
                # PNG, lossless: the polygon's pixels are exactly one colour, and none around it.
                colours = np.unique(image[mask], axis=0)
                assert len(colours) == 1
                ring = _erode(~mask, 0) & ~_erode(~mask, 1)  # the pixels just outside the polygon
                assert not (image[ring] == colours[0]).all(-1).any()
            assert covered.max() == 1  # disjoint instances: nothing occluded
