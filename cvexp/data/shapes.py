"""Synthetic COCO-format dataset of coloured shapes, generated on first use.

The embedded default dataset (``data=shapes``): small images with circles, squares and
triangles on a textured background. It is written deterministically from a seed, so every
machine trains on the same pixels and the quickstart needs no download.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})
ANNOTATION_FILE = "_annotations.coco.json"
_MARKER_FILE = ".cvexp-shapes.json"


@dataclass(frozen=True)
class SyntheticShapes:
    """Writes a train/val/test COCO dataset of shapes under ``root`` unless it is already there.

    Calling the instance is idempotent: a marker file records the generation parameters and the
    dataset is rewritten only when they change.
    """

    root: str
    image_size: int = 96
    num_train: int = 1000
    num_val: int = 100
    num_test: int = 100
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int = 14
    max_object_size: int = 36
    seed: int = 0

    def split_dir(self, split: str) -> Path:
        return Path(self.root) / split

    def __call__(self) -> None:
        root = Path(self.root)
        marker = root / _MARKER_FILE
        fingerprint = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            return
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        for split_index, (split, count) in enumerate(sizes.items()):
            # One generator per split, so changing the size of one split leaves the others intact.
            rng = np.random.default_rng([self.seed, split_index])
            self._write_split(self.split_dir(split), count, rng)
        marker.write_text(json.dumps({"fingerprint": fingerprint, "params": asdict(self)}, indent=2))

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
        coco = {
            "info": {"description": "cvexp synthetic shapes", "version": "1"},
            "licenses": [],
            "categories": [dict(c, supercategory="shape") for c in SHAPE_CATEGORIES],
            "images": images,
            "annotations": annotations,
        }
        (split_dir / ANNOTATION_FILE).write_text(json.dumps(coco))

    def _draw_image(self, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
        size = self.image_size
        background = rng.integers(0, 256, size=3)
        noise = rng.normal(0, 12, size=(size, size, 3))
        pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        placed: list[list[float]] = []
        objects: list[tuple[int, list[float]]] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(20):
                side = float(rng.integers(self.min_object_size, self.max_object_size + 1))
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


def _contrasting_colour(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    # Redraw until the shape differs clearly from the background, so every box is visible.
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 150:
            return tuple(int(c) for c in colour)


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


__all__ = ["ANNOTATION_FILE", "SHAPE_CATEGORIES", "SyntheticShapes"]
