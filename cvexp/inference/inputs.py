"""What to predict on: a folder of images, a glob, or a COCO split, as a dataset the predictor batches."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cvexp.data.coco import load_annotation_file
from cvexp.data.images import load_rgb_image
from cvexp.data.targets import ImageInfo, Sample

COCO_SPLIT_ANNOTATIONS = "_annotations.coco.json"


@dataclass(frozen=True)
class ImageInput:
    """One image to predict on: its id in the results json, where it is, and the name the json gives it."""

    image_id: int
    path: Path
    file_name: str


def image_suffixes() -> set[str]:
    """File extensions that Pillow can open."""
    return {suffix for suffix, image_format in Image.registered_extensions().items() if image_format in Image.OPEN}


def resolve_inputs(inputs: str, annotation_file: str | None = None) -> list[ImageInput]:
    """The images that ``inputs`` names, with stable ids.

    - a COCO split (a folder with ``_annotations.coco.json``, or ``annotation_file``): its images
      and image ids, so that the results evaluate against its ground truth;
    - a folder: its image files, sorted by name, numbered from 1;
    - otherwise a glob pattern (``**`` recurses): the matching image files, sorted, numbered from 1.
    """
    root = Path(inputs)
    annotations = Path(annotation_file) if annotation_file else root / COCO_SPLIT_ANNOTATIONS
    if annotations.is_file():
        records = sorted(load_annotation_file(annotations)["images"], key=lambda info: info["id"])
        images = [ImageInput(int(info["id"]), root / info["file_name"], info["file_name"]) for info in records]
        missing = [image.file_name for image in images if not image.path.is_file()]
        if missing:
            raise FileNotFoundError(f"{annotations}: {len(missing)} listed images are not in {root} (first: '{missing[0]}'). "
                                    "Point inputs= at the folder that holds the split's images.")  # fmt: skip
        return images
    suffixes = image_suffixes()
    if root.is_dir():
        paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        names = [p.name for p in paths]
    else:
        paths = sorted(Path(p) for p in glob.glob(inputs, recursive=True) if Path(p).suffix.lower() in suffixes)
        names = [str(p) for p in paths]
    if not paths:
        raise FileNotFoundError(f"inputs={inputs}: no images found. Pass a folder of images, a glob such as "
                                "'images/**/*.jpg' (quoted), or a COCO split's images folder.")  # fmt: skip
    return [ImageInput(index, path, name) for index, (path, name) in enumerate(zip(paths, names, strict=True), start=1)]


class ImageFilesDataset(Dataset):
    """Images without annotations, as :class:`Sample` with :class:`ImageInfo` targets (for the collator)."""

    def __init__(self, images: list[ImageInput]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        item = self.images[index]
        return unlabelled_sample(load_rgb_image(item.path), item.image_id, item.file_name)


def unlabelled_sample(image: np.ndarray, image_id: int, file_name: str = "") -> Sample:
    """An HWC uint8 image without ground truth, which :class:`BatchCollator` batches like a dataset sample."""
    return Sample(image=image, target=ImageInfo(image_id, (int(image.shape[0]), int(image.shape[1])), file_name))
