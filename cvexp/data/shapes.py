"""Synthetic datasets of coloured shapes, generated on first use.

The embedded default datasets: small images with circles, squares and triangles on a textured
background, written deterministically from a seed, so every machine trains on the same pixels and
the quickstart needs no download. ``labels`` chooses the task and its (Roboflow export) layout,
one folder per split (``train/``, ``val/``, ``test/``) under ``root``:

- ``"boxes"`` (object detection, ``data=shapes``): ``shapes_NNNNN.png`` and a COCO
  ``_annotations.coco.json`` with ``bbox`` only (1-4 disjoint shapes per image).
- ``"classes"`` (image classification): one shape per image, ``shapes_NNNNN.jpg`` and Roboflow's
  multi-class ``_classes.csv`` (``filename, circle, square, triangle``, one-hot rows).
- ``"semantic_masks"`` (semantic segmentation, Roboflow's ``png-mask-semantic``):
  ``shapes_NNNNN.jpg``, ``shapes_NNNNN_mask.png`` (8-bit, pixel value = class id, 0 background)
  and ``_classes.csv`` (``Pixel Value, Class``). Shapes may overlap; the later one is on top, in
  the image and in the mask alike.
- ``"instance_polygons"`` (instance segmentation): ``shapes_NNNNN.png`` and a COCO
  ``_annotations.coco.json`` whose annotations carry ``segmentation`` polygons, ``bbox`` (the
  polygon's box) and ``area`` (pycocotools' area of the rasterised polygon). Instances are
  disjoint, so every polygon is exactly its visible pixels.

Every shape except the ``"boxes"`` ones is one polygon (circles as 24-gons) rasterised once by
pycocotools, the rasteriser COCO's ``annToMask`` uses; the image, the mask and the annotation are
all painted from that one rasterisation, so they agree pixel for pixel (up to JPEG, for the
``.jpg`` images).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

SHAPE_CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})
ANNOTATION_FILE = "_annotations.coco.json"
#: Roboflow's per-split class file: the one-hot table (``classes``) or the pixel values (``semantic_masks``).
CLASSES_FILE = "_classes.csv"
#: Roboflow's ``png-mask-semantic`` naming: ``NAME.jpg`` and its mask ``NAME_mask.png``.
MASK_SUFFIX = "_mask.png"
#: The values of ``SyntheticShapes.labels``, the task whose labels are written.
LABEL_KINDS = ("boxes", "classes", "semantic_masks", "instance_polygons")
_MARKER_FILE = ".cvexp-shapes.json"
# Shape sizes (the larger side of the drawn shape's box, pixels) when min/max_object_size are not given.
_DEFAULT_OBJECT_SIZES = {"boxes": (14, 36), "semantic_masks": (16, 40), "instance_polygons": (16, 40)}
_CLASS_OBJECT_FRACTION = (0.3, 0.8)  # ``classes``: of the image side
_CIRCLE_VERTICES = 24
# Squares and triangles lean by up to this much either way: varied, yet learnable from 1000 images
# with flips alone (a tiny SegFormer from scratch: mIoU 0.90 at 15 degrees, 0.68 at any angle).
_MAX_ROTATION_DEGREES = 15.0
_JPEG = {"quality": 95, "subsampling": 0}  # 4:4:4, so colours do not bleed across the shape edges


@dataclass(frozen=True)
class SyntheticShapes:
    """Writes a train/val/test dataset of shapes under ``root`` unless it is already there.

    ``labels`` is the task: ``"boxes"`` (COCO detection, the default), ``"classes"`` (Roboflow
    classification CSV), ``"semantic_masks"`` (Roboflow ``png-mask-semantic``) or
    ``"instance_polygons"`` (COCO with polygons); the module docstring gives each layout.
    ``min_object_size``/``max_object_size`` bound the larger side of each shape's box in pixels;
    left out, they are 14-36 (boxes), 16-40 (semantic_masks, instance_polygons) or 30-80 % of
    ``image_size`` (classes). ``min_objects``/``max_objects`` do not apply to ``classes`` (one
    shape per image).

    Calling the instance is idempotent: a marker file in ``root`` records the generation
    parameters, the labels kind included, and the dataset is rewritten only when they change; the
    files of the previous generation are then removed first, so a root switched to another kind
    holds only the new layout. Give each kind its own ``root`` to keep them all.
    """

    root: str
    image_size: int = 96
    num_train: int = 1000
    num_val: int = 100
    num_test: int = 100
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int | None = None
    max_object_size: int | None = None
    seed: int = 0
    labels: str = "boxes"

    def __post_init__(self) -> None:
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"SyntheticShapes: labels={self.labels!r} is not one of {', '.join(LABEL_KINDS)}")
        low, high = self.object_size_range
        if not 1 <= low <= high <= self.image_size:
            raise ValueError(f"SyntheticShapes: object sizes {low}-{high} do not fit 1..image_size ({self.image_size})")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"SyntheticShapes: min_objects={self.min_objects}, max_objects={self.max_objects} (need 1 <= min <= max)"
            )

    @property
    def object_size_range(self) -> tuple[int, int]:
        """(smallest, largest) side of a shape's box in pixels, the per-kind default where not given."""
        if self.labels == "classes":
            default = tuple(round(f * self.image_size) for f in _CLASS_OBJECT_FRACTION)
        else:
            default = _DEFAULT_OBJECT_SIZES[self.labels]
        low = default[0] if self.min_object_size is None else self.min_object_size
        high = default[1] if self.max_object_size is None else self.max_object_size
        return int(low), int(high)

    def split_dir(self, split: str) -> Path:
        return Path(self.root) / split

    def _params(self) -> dict[str, Any]:
        params = asdict(self)
        params["min_object_size"], params["max_object_size"] = self.object_size_range
        if self.labels == "boxes":
            # As before ``labels`` existed, so a boxes dataset written then is still recognised.
            del params["labels"]
        return params

    def __call__(self) -> None:
        root = Path(self.root)
        marker = root / _MARKER_FILE
        params = self._params()
        fingerprint = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()
        previous = json.loads(marker.read_text()) if marker.exists() else None
        if previous is not None and previous.get("fingerprint") == fingerprint and previous.get("complete", True):
            return
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        if previous is not None and previous.get("fingerprint") != fingerprint:
            # Written here before with other parameters (or another kind): no stale file may remain.
            for split in sizes:
                _remove_generated(self.split_dir(split))
        root.mkdir(parents=True, exist_ok=True)
        record = {"fingerprint": fingerprint, "labels": self.labels, "params": params}
        # In progress until the end: an interrupted generation is redone by the next call.
        marker.write_text(json.dumps({**record, "complete": False}, indent=2))
        for split_index, (split, count) in enumerate(sizes.items()):
            # One generator per split, so changing the size of one split leaves the others intact;
            # the other kinds draw from their own streams ("boxes" keeps its original one).
            kind_index = LABEL_KINDS.index(self.labels)
            rng = np.random.default_rng([self.seed, split_index] if kind_index == 0 else [self.seed, split_index, kind_index])
            split_dir = self.split_dir(split)
            split_dir.mkdir(parents=True, exist_ok=True)
            if self.labels == "boxes":
                self._write_split(split_dir, count, rng)
            elif self.labels == "classes":
                self._write_classes_split(split_dir, count, rng)
            elif self.labels == "semantic_masks":
                self._write_semantic_split(split_dir, count, rng)
            else:
                self._write_instance_split(split_dir, count, rng)
        marker.write_text(json.dumps({**record, "complete": True}, indent=2))

    # --- boxes (unchanged: the same bytes for the same seed as before the other kinds) ------------

    def _write_split(self, split_dir: Path, count: int, rng: np.random.Generator) -> None:
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            image, objects = self._draw_image(rng)
            file_name = f"shapes_{image_id:05d}.png"
            image.save(split_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": self.image_size, "height": self.image_size})
            for category_id, bbox in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [round(v, 2) for v in bbox],
                        "area": round(bbox[2] * bbox[3], 2),
                        "iscrowd": 0,
                        "segmentation": [],
                    }
                )
        _write_coco(split_dir, "cvexp synthetic shapes", images, annotations)

    def _draw_image(self, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
        size = self.image_size
        background = rng.integers(0, 256, size=3)
        noise = rng.normal(0, 12, size=(size, size, 3))
        pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        placed: list[list[float]] = []
        objects: list[tuple[int, list[float]]] = []
        min_size, max_size = self.object_size_range
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(20):
                side = float(rng.integers(min_size, max_size + 1))
                x0, y0 = rng.uniform(0, size - side, size=2)
                box = [float(x0), float(y0), side, side]
                if all(_iou(box, other) == 0.0 for other in placed):  # no occlusion: every box fully visible
                    break
            else:
                continue
            category = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))]
            colour = _contrasting_colour(background, rng)
            bbox = _draw_shape(draw, category["name"], box, colour)
            placed.append(box)
            objects.append((category["id"], bbox))
        return image, objects

    # --- classes ------------------------------------------------------------------------------

    def _write_classes_split(self, split_dir: Path, count: int, rng: np.random.Generator) -> None:
        names = [c["name"] for c in SHAPE_CATEGORIES]
        rows = [", ".join(["filename", *names])]
        low, high = self.object_size_range
        for image_id in range(1, count + 1):
            size = self.image_size
            pixels, base = _textured_background(rng, size)
            category = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))]
            polygon = _place_polygon(rng, category["name"], float(rng.uniform(low, high)), size)
            pixels[_rasterise(polygon, size)] = _contrasting_colour(base, rng)
            # Sensor-like noise over everything, the shape included: not a flat-colour template.
            pixels = np.clip(pixels + rng.normal(0, 8, size=pixels.shape), 0, 255)
            file_name = f"shapes_{image_id:05d}.jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(split_dir / file_name, **_JPEG)
            rows.append(", ".join([file_name, *("1" if name == category["name"] else "0" for name in names)]))
        (split_dir / CLASSES_FILE).write_text("\n".join(rows) + "\n")

    # --- semantic masks -----------------------------------------------------------------------

    def _write_semantic_split(self, split_dir: Path, count: int, rng: np.random.Generator) -> None:
        for image_id in range(1, count + 1):
            size = self.image_size
            pixels, base = _textured_background(rng, size)
            mask = np.zeros((size, size), dtype=np.uint8)
            colours: list[tuple[int, int, int]] = []
            for polygon, category in self._polygons(rng, disjoint=False):
                # Distinct from the background and from the shapes drawn before, which it may cover.
                colour = _contrasting_colour(base, rng, avoid=colours)
                inside = _rasterise(polygon, size)
                pixels[inside] = colour
                mask[inside] = category["id"]  # drawing order: the later shape is on top, here too
                colours.append(colour)
            stem = f"shapes_{image_id:05d}"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(split_dir / f"{stem}.jpg", **_JPEG)
            Image.fromarray(mask, mode="L").save(split_dir / f"{stem}{MASK_SUFFIX}")
        rows = ["Pixel Value, Class", "0, background", *(f"{c['id']}, {c['name']}" for c in SHAPE_CATEGORIES)]
        (split_dir / CLASSES_FILE).write_text("\n".join(rows) + "\n")

    # --- instance polygons --------------------------------------------------------------------

    def _write_instance_split(self, split_dir: Path, count: int, rng: np.random.Generator) -> None:
        images, annotations = [], []
        size = self.image_size
        for image_id in range(1, count + 1):
            pixels, base = _textured_background(rng, size)
            for polygon, category in self._polygons(rng, disjoint=True):
                inside = _rasterise(polygon, size)
                pixels[inside] = _contrasting_colour(base, rng)
                x0, y0, x1, y1 = _polygon_box(polygon)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category["id"],
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "area": float(inside.sum()),  # = pycocotools' maskUtils.area of this polygon
                        "iscrowd": 0,
                        "segmentation": [polygon],
                    }
                )
            file_name = f"shapes_{image_id:05d}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(split_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        _write_coco(split_dir, "cvexp synthetic shapes (instance polygons)", images, annotations)

    def _polygons(self, rng: np.random.Generator, disjoint: bool) -> list[tuple[list[float], dict]]:
        """The shapes of one image, in drawing order: (flat polygon, category).

        ``disjoint``: boxes at least 2 px apart, so no shape touches another. Otherwise two boxes
        may overlap by at most a quarter of the smaller one, so every shape stays recognisable.
        """
        size = self.image_size
        low, high = self.object_size_range
        shapes: list[tuple[list[float], dict]] = []
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(20):
                category = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))]
                polygon = _place_polygon(rng, category["name"], float(rng.uniform(low, high)), size)
                box = _polygon_box(polygon)
                if all(_boxes_compatible(box, other, disjoint) for other in boxes):
                    break
            else:
                continue
            shapes.append((polygon, category))
            boxes.append(box)
        return shapes


def _contrasting_colour(
    background: np.ndarray, rng: np.random.Generator, avoid: Sequence[tuple[int, int, int]] = ()
) -> tuple[int, int, int]:
    # Redraw until the shape differs clearly from the background (and from the ``avoid`` colours),
    # so every shape is visible.
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 150 and all(np.abs(colour - np.asarray(c)).sum() > 100 for c in avoid):
            return tuple(int(c) for c in colour)


def _textured_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size, 3) float background: a base colour, a gentle linear gradient and noise; and the base colour."""
    base = rng.integers(0, 256, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(-25, 25, size=3)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1) * 2 - 1  # [-1, 1]
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / np.sqrt(2)
    pixels = base + ramp[..., None] * amplitude + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(pixels, 0, 255), base


def _place_polygon(rng: np.random.Generator, name: str, side: float, size: int) -> list[float]:
    """A shape, turned by a random angle of at most ``_MAX_ROTATION_DEGREES`` and placed at random,
    as a flat COCO polygon inside the image.

    ``side`` is the larger side of its box; coordinates are rounded to 2 decimals, as written.
    """
    angle = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEGREES, _MAX_ROTATION_DEGREES))
    if name == "circle":
        t = angle + np.arange(_CIRCLE_VERTICES) * 2 * np.pi / _CIRCLE_VERTICES
        points = np.stack([np.cos(t), np.sin(t)], axis=1) / 2
    else:
        corners = (
            [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)] if name == "square" else [(0, -0.5), (0.5, 0.5), (-0.5, 0.5)]
        )
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = np.asarray(corners) @ rotation.T
    extent = points.max(0) - points.min(0)
    points = points * (side / extent.max())
    low, high = points.min(0), points.max(0)
    origin = rng.uniform(0, 1, size=2) * (size - (high - low))
    points = points - low + origin
    return [round(float(v), 2) for v in points.reshape(-1)]


def _rasterise(polygon: list[float], size: int) -> np.ndarray:
    """The (size, size) bool pixels of a flat polygon, as pycocotools (``annToMask``) rasterises it."""
    return coco_mask.decode(coco_mask.frPyObjects([polygon], size, size))[:, :, 0].astype(bool)


def _polygon_box(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _boxes_compatible(a: list[float], b: list[float], disjoint: bool) -> bool:
    """``a`` and ``b`` (x0, y0, x1, y1): 2 px apart if ``disjoint``, else overlapping by <= 1/4 of the smaller."""
    if disjoint:
        gap = 2.0
        return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter <= 0.25 * smaller


def _remove_generated(split_dir: Path) -> None:
    """Removes what a previous generation wrote in ``split_dir`` (its file names only; nothing else)."""
    if not split_dir.is_dir():
        return
    for path in split_dir.iterdir():
        generated = path.name in (ANNOTATION_FILE, CLASSES_FILE) or (
            path.name.startswith("shapes_") and path.suffix in (".png", ".jpg")
        )
        if generated and path.is_file():
            path.unlink()


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, box: list[float], colour: tuple[int, int, int]) -> list[float]:
    """Draws one shape filling ``box`` (xywh), so ``box`` is also its tight COCO box."""
    x, y, w, h = box
    if name == "circle":
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    elif name == "square":
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    else:  # an upright triangle: apex on the top edge, base on the bottom edge
        draw.polygon([(x + w / 2, y), (x + w, y + h), (x, y + h)], fill=colour)
    return box


def _iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


__all__ = ["ANNOTATION_FILE", "CLASSES_FILE", "LABEL_KINDS", "MASK_SUFFIX", "SHAPE_CATEGORIES", "SyntheticShapes"]


def _write_coco(split_dir: Path, description: str, images: list[dict], annotations: list[dict]) -> None:
    """The split's COCO json (``ANNOTATION_FILE``), with the shape categories."""
    coco = {
        "info": {"description": description, "version": "1"},
        "licenses": [],
        "categories": [dict(c, supercategory="shape") for c in SHAPE_CATEGORIES],
        "images": images,
        "annotations": annotations,
    }
    (split_dir / ANNOTATION_FILE).write_text(json.dumps(coco))
