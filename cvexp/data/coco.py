"""COCO-format detection dataset on pycocotools, with input validation that names file and field.

Boxes stay in the dataset's own terms here (absolute ``xywh``, the dataset's category ids);
translating them for a model is the adapter's job.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO

InvalidPolicy = Literal["raise", "skip"]
# Tolerance for boxes that overrun the image by rounding in annotation tools.
_EDGE_TOLERANCE_PX = 1.0


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the record and the fix."""


@dataclass(frozen=True)
class Category:
    """A dataset category: its own COCO id and name."""

    id: int
    name: str


class LabelMap:
    """Maps the dataset's COCO category ids to contiguous training labels ``0..K-1`` and back.

    A plain class, not a dataclass: Hydra's ``instantiate`` would turn a dataclass argument into
    a config node.
    """

    def __init__(self, categories: list[Category]) -> None:
        self.categories = list(categories)
        # Built once: both lookups run for every image of every batch.
        self._index_of_id = {category.id: index for index, category in enumerate(self.categories)}
        self._ids = torch.tensor([category.id for category in self.categories], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"LabelMap({self.categories!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other.categories == self.categories

    @property
    def num_labels(self) -> int:
        return len(self.categories)

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous label -> class name, as Hugging Face model configs store it."""
        return {index: category.name for index, category in enumerate(self.categories)}

    @property
    def label2id(self) -> dict[str, int]:
        return {category.name: index for index, category in enumerate(self.categories)}

    def to_contiguous(self, category_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._index_of_id[int(c)] for c in category_ids], dtype=torch.int64)

    def to_category_ids(self, labels: torch.Tensor) -> torch.Tensor:
        return self._ids[labels.cpu().long()]

    @classmethod
    def from_coco(cls, coco: COCO) -> LabelMap:
        """Every category, except a supercategory that has no boxes of its own.

        Roboflow exports list their supercategory (e.g. ``0 RBC-WBC``) as a category; training a
        class that never occurs would only cost capacity, so it is left out.
        """
        categories = sorted(coco.dataset.get("categories", []), key=lambda c: c["id"])
        parents = {c.get("supercategory") for c in categories}
        used = {a["category_id"] for a in coco.dataset.get("annotations", [])}
        kept = [c for c in categories if c["id"] in used or c["name"] not in parents]
        return cls([Category(int(c["id"]), str(c["name"])) for c in kept])


@dataclass
class DetectionTarget:
    """Ground truth of one image in COCO terms: absolute ``xywh`` boxes, dataset category ids."""

    image_id: int
    boxes: torch.Tensor  # (N, 4) float32, absolute xywh in the current image
    category_ids: torch.Tensor  # (N,) int64, the dataset's own ids
    iscrowd: torch.Tensor  # (N,) int64
    area: torch.Tensor  # (N,) float32, as the annotation file gives it (COCO evaluation uses it)
    size: tuple[int, int]  # (height, width) of the image as the model sees it, before resizing
    file_name: str = ""


@dataclass
class DetectionSample:
    """One image (HWC uint8 RGB) and its target."""

    image: np.ndarray
    target: DetectionTarget


@dataclass
class CocoSplit:
    """Where one split lives: an images folder and its COCO annotation file."""

    images_dir: str
    annotation_file: str | None = None  # default: ``images_dir/_annotations.coco.json``

    @property
    def annotation_path(self) -> Path:
        if self.annotation_file:
            return Path(self.annotation_file)
        return Path(self.images_dir) / "_annotations.coco.json"


def load_coco(annotation_path: Path) -> COCO:
    """Reads a COCO annotation file into pycocotools, with errors that say what to fix."""
    if not annotation_path.is_file():
        raise DatasetError(f"{annotation_path}: annotation file not found. Fix: point the data config's split at a COCO json.")
    try:
        content = json.loads(annotation_path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{annotation_path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DatasetError(f"{annotation_path}: field '{key}' is missing or not a list; a COCO detection file needs it.")
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every index
        coco.createIndex()
    return coco


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Images and boxes of one COCO split, optionally passed through a bbox-aware augmentation.

    Args:
        split: the images folder and annotation file.
        transform: an albumentations ``Compose`` built by :func:`cvexp.data.augmentation.detection_compose`.
        on_invalid: ``raise`` stops at the first bad record with a message naming it; ``skip``
            warns and drops the record (a missing image drops the image, a bad box its annotation).
        cache_images: keep each decoded image in memory after its first read (each DataLoader
            worker holds its own copy). Worth it for small datasets read for many epochs: decoding
            is about a third of the data time of the default run.
    """

    def __init__(
        self, split: CocoSplit, transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False
    ) -> None:
        if on_invalid not in ("raise", "skip"):
            raise DatasetError(f"data.on_invalid is '{on_invalid}'; use 'raise' or 'skip'.")
        self.split = split
        self.transform = transform
        self.on_invalid = on_invalid
        self.annotation_path = split.annotation_path
        self.coco = load_coco(self.annotation_path)
        self.label_map = LabelMap.from_coco(self.coco)
        self.image_ids: list[int] = []
        self._annotations: dict[int, list[dict]] = {}
        self._image_cache: dict[int, np.ndarray] | None = {} if cache_images else None
        self._validate()

    def _reject(self, message: str) -> None:
        if self.on_invalid == "raise":
            raise DatasetError(f"{message} Fix the record, or set data.on_invalid=skip to drop it with a warning.")
        warnings.warn(f"{message} Skipped (data.on_invalid=skip).", stacklevel=3)

    def _validate(self) -> None:
        images_dir = Path(self.split.images_dir)
        known_categories = {c["id"] for c in self.coco.dataset["categories"]}
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            if not (images_dir / info["file_name"]).is_file():
                self._reject(f"{self.annotation_path}: image {image_id} names file '{info['file_name']}', which is not in {images_dir}.")
                continue
            kept = []
            for annotation in self.coco.imgToAnns.get(image_id, []):
                problem = _annotation_problem(annotation, info, known_categories)
                if problem:
                    self._reject(f"{self.annotation_path}: annotation {annotation.get('id')} (image {image_id}, '{info['file_name']}'): {problem}.")
                    continue
                kept.append(annotation)
            self.image_ids.append(image_id)
            self._annotations[image_id] = kept

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> DetectionSample:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = self._load_image(image_id, info["file_name"])
        annotations = self._annotations[image_id]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        category_ids = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        iscrowd = np.array([a.get("iscrowd", 0) for a in annotations], dtype=np.int64)
        area = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in annotations], dtype=np.float32)
        if self.transform is not None:
            height, width = image.shape[:2]
            # Albumentations rejects boxes outside the image and boxes without area: clip the
            # sub-pixel overruns, and pass only boxes with area (the others teach nothing).
            boxes = _clip_xywh(boxes, width, height)
            with_area = np.flatnonzero((boxes[:, 2] > 0) & (boxes[:, 3] > 0))
            out = self.transform(image=image, bboxes=boxes[with_area], category_ids=category_ids[with_area], annotation_indices=with_area)
            image = out["image"]
            kept = np.asarray(out["annotation_indices"], dtype=np.int64)
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            category_ids, iscrowd = category_ids[kept], iscrowd[kept]
            area = boxes[:, 2] * boxes[:, 3]
        target = DetectionTarget(
            image_id=int(image_id),
            boxes=torch.from_numpy(boxes),
            category_ids=torch.from_numpy(category_ids),
            iscrowd=torch.from_numpy(iscrowd),
            area=torch.from_numpy(np.asarray(area, dtype=np.float32)),
            size=(int(image.shape[0]), int(image.shape[1])),
            file_name=info["file_name"],
        )
        return DetectionSample(image=image, target=target)

    def _load_image(self, image_id: int, file_name: str) -> np.ndarray:
        if self._image_cache is None:
            return load_rgb_image(Path(self.split.images_dir) / file_name)
        image = self._image_cache.get(image_id)
        if image is None:
            image = load_rgb_image(Path(self.split.images_dir) / file_name)
            image.flags.writeable = False  # shared by every epoch: a transform must not write into it
            self._image_cache[image_id] = image
        return image


def load_rgb_image(path: Path | BinaryIO) -> np.ndarray:
    """Loads any image (a file path, or an open binary file) as HWC uint8 RGB, upright as its EXIF orientation says."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on white: dropping alpha would expose whatever colour transparent pixels hold.
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        return np.asarray(image.convert("RGB"))


def _annotation_problem(annotation: dict, image_info: dict, known_categories: set[int]) -> str | None:
    """Returns what is wrong with one annotation, or ``None``."""
    if annotation.get("category_id") not in known_categories:
        return f"category_id {annotation.get('category_id')} is not among the file's categories {sorted(known_categories)}"
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, width, height]"
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return f"bbox width/height is negative ({w}, {h})"
    width, height = image_info.get("width"), image_info.get("height")
    if width and height and (x < -_EDGE_TOLERANCE_PX or y < -_EDGE_TOLERANCE_PX
                             or x + w > width + _EDGE_TOLERANCE_PX or y + h > height + _EDGE_TOLERANCE_PX):
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


def _clip_xywh(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    x1 = np.clip(boxes[:, 0], 0, width)
    y1 = np.clip(boxes[:, 1], 0, height)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).astype(np.float32)


__all__ = [
    "Category",
    "CocoDetectionDataset",
    "CocoSplit",
    "DatasetError",
    "DetectionSample",
    "DetectionTarget",
    "LabelMap",
    "load_coco",
    "load_rgb_image",
]
