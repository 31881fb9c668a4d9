"""What to predict on: a folder of images, a glob, a COCO split or a parquet table, as a dataset the predictor batches."""

from __future__ import annotations

import glob
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cvexp.data.coco import load_annotation_file
from cvexp.data.images import load_rgb_image
from cvexp.data.targets import ImageInfo, Sample
from cvexp.errors import DatasetError

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
            raise DatasetError(f"{annotations}: {len(missing)} listed images are not in {root} (first: '{missing[0]}'). "
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
        raise DatasetError(f"inputs={inputs}: no images found. Pass a folder of images, a glob such as "
                                "'images/**/*.jpg' (quoted), or a COCO split's images folder.")  # fmt: skip
    return [ImageInput(index, path, name) for index, (path, name) in enumerate(zip(paths, names, strict=True), start=1)]


class PredictionInputs(Dataset, ABC):
    """The images of a prediction run, for either engine: samples for a local ``DataLoader``, or rows for Ray Data.

    A row (:meth:`to_ray`) holds ``image_id``, optionally ``file_name``, and either ``path`` (an image
    file) or ``image`` (a parquet cell: encoded bytes, a ``{bytes, path}`` struct, or a path); a Ray
    actor decodes it with :func:`decode_row`, relative paths from :attr:`base_dir`.
    """

    base_dir: Path | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    @abstractmethod
    def to_ray(self) -> Any:
        """The rows as a ``ray.data.Dataset`` (read where the Ray workers run, not on the driver)."""


class ImageFilesDataset(PredictionInputs):
    """Image files without annotations, as :class:`Sample` with :class:`ImageInfo` targets (for the collator)."""

    def __init__(self, images: list[ImageInput]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        item = self.images[index]
        return unlabelled_sample(load_rgb_image(item.path), item.image_id, item.file_name)

    def to_ray(self) -> Any:
        import ray.data

        return ray.data.from_items([{"image_id": i.image_id, "file_name": i.file_name, "path": str(i.path)} for i in self.images])


@dataclass(frozen=True)
class ParquetColumns:
    """Which columns of a parquet table hold each image, its id and its name.

    Args:
        image: encoded image bytes (PNG, JPEG, ...), a ``{bytes, path}`` struct (a Hugging Face
            ``datasets`` Image column), or a path (relative paths from the parquet's folder).
        image_id: integer image ids (the results' ``image_id``).
        file_name: the name the results give each image; ``None`` or a missing column: its id.
    """

    image: str = "image"
    image_id: str = "image_id"
    file_name: str | None = "file_name"


class ParquetImagesDataset(PredictionInputs):
    """The images of a parquet file (or a folder of them), one row each.

    Args:
        path: a ``.parquet`` file, or a folder of them.
        columns: the columns that hold the image, its id and its name.
    """

    def __init__(self, path: Path, columns: ParquetColumns) -> None:
        import pyarrow.dataset

        self.path = Path(path)
        self.base_dir = self.path if self.path.is_dir() else self.path.parent
        self._parquet = pyarrow.dataset.dataset(str(self.path), format="parquet")
        names = set(self._parquet.schema.names)
        for role, column in (("image", columns.image), ("image_id", columns.image_id)):
            if column not in names:
                raise DatasetError(f"inputs={path}: no column '{column}' (parquet.{role}); its columns are {sorted(names)}. "
                                 f"Set parquet.{role}=<column> (image ids must be integers).")  # fmt: skip
        self.columns = {columns.image: "image", columns.image_id: "image_id"}
        if columns.file_name and columns.file_name in names:
            self.columns[columns.file_name] = "file_name"
        self._rows: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self._parquet.count_rows()

    def __getitem__(self, index: int) -> Sample:
        if self._rows is None:  # the local engine reads the table once, on first use
            table = self._parquet.to_table(columns=list(self.columns)).rename_columns(list(self.columns.values()))
            self._rows = table.to_pylist()
        return row_sample(self._rows[index], self.base_dir)

    def to_ray(self) -> Any:
        import ray.data

        # Reading takes no CPU of its own: the actors may hold every CPU of the cluster (decoding is theirs).
        dataset = ray.data.read_parquet(str(self.path), columns=list(self.columns), num_cpus=0)
        return dataset.rename_columns(self.columns)


def prediction_inputs(inputs: str, annotation_file: str | None = None, columns: ParquetColumns | None = None) -> PredictionInputs:
    """The images ``inputs`` names: a parquet file or a folder of them (with an image column, see
    :class:`ParquetColumns`), else image files as :func:`resolve_inputs` finds them."""
    root = Path(inputs)
    is_parquet = root.suffix == ".parquet" or (root.is_dir() and any(root.glob("*.parquet")) and not any(
        p.suffix.lower() in image_suffixes() for p in root.iterdir()))  # fmt: skip
    if is_parquet:
        if not root.exists():
            raise DatasetError(f"inputs={inputs}: no such parquet file or folder. Fix: the path of a .parquet file, or of a folder of them.")
        return ParquetImagesDataset(root, columns or ParquetColumns())
    return ImageFilesDataset(resolve_inputs(inputs, annotation_file))


def row_sample(row: dict[str, Any], base_dir: Path | None = None) -> Sample:
    """A prediction-input row as the collator's :class:`Sample`: its decoded image, its id, and its name (else its id)."""
    return unlabelled_sample(decode_row(row, base_dir), int(row["image_id"]), str(row.get("file_name") or row["image_id"]))


def decode_row(row: dict[str, Any], base_dir: Path | None = None) -> np.ndarray:
    """The image of a prediction-input row (HWC uint8 RGB): its ``path``, or its ``image`` cell (bytes, ``{bytes, path}``, or a path)."""
    value = row.get("image") if row.get("image") is not None else row.get("path")
    if isinstance(value, dict):  # a Hugging Face datasets Image struct
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return load_rgb_image(io.BytesIO(bytes(value)))
    if isinstance(value, str) and value:
        path = Path(value)
        return load_rgb_image(path if path.is_absolute() or base_dir is None else base_dir / path)
    raise DatasetError(f"image {row.get('image_id')}: its image cell holds neither bytes nor a path ({type(value).__name__}).")


def unlabelled_sample(image: np.ndarray, image_id: int, file_name: str = "") -> Sample:
    """An HWC uint8 image without ground truth, which :class:`BatchCollator` batches like a dataset sample."""
    return Sample(image=image, target=ImageInfo(image_id, (int(image.shape[0]), int(image.shape[1])), file_name))
