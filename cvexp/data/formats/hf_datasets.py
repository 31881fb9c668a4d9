"""Hugging Face ``datasets`` detection data: a dataset saved with ``save_to_disk``, or parquet files.

The layout of the transformers object-detection example (e.g. ``cppe-5``): an ``image`` column,
optionally ``image_id``, ``width`` and ``height``, and an ``objects`` column holding per image the
lists ``bbox`` (COCO ``[x, y, width, height]`` in pixels), ``category`` (class indices, a
``ClassLabel`` that names the classes) and optionally ``area`` and ``iscrowd``; ``objects``
may also be a list of per-object dicts.

Read as COCO: class index ``i`` is category id ``i``, named by the ``ClassLabel`` (or by
``classes``); an image's id is its ``image_id`` (its row number without one). The images, stored
as encoded bytes inside the dataset, are written once to a cache folder named by the dataset's
fingerprint, so that the rest of cvexp (header checks, workers, caching, reports) reads files as
for every other layout.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from cvexp.data.coco import CocoDetectionDataset
from cvexp.data.formats.records import RecordsBuilder
from cvexp.data.readers import progress
from cvexp.data.validation import DEFAULT_MAX_IMAGE_PIXELS, CocoRecords, ImageHeaderCache, read_image_header
from cvexp.errors import DatasetError


def load_split(split: str | None, dataset_dir: str | None = None, parquet_file: str | None = None) -> Any:
    """The ``datasets.Dataset`` of one split: from a ``save_to_disk`` folder (a ``DatasetDict`` is indexed by ``split``) or parquet files (a glob)."""
    import datasets

    if (dataset_dir is None) == (parquet_file is None):
        raise DatasetError(f"data.{split or '<split>'}: give either dataset_dir (a save_to_disk folder) or parquet_file (parquet files, "
                           "a glob allowed), not both and not neither.")  # fmt: skip
    if parquet_file is not None:
        try:
            return datasets.load_dataset("parquet", data_files=parquet_file, split="train")
        except FileNotFoundError as error:
            raise DatasetError(f"{parquet_file}: no parquet files found ({error}). Fix: point data.{split}.parquet_file at them.") from error
    folder = Path(dataset_dir)
    if not (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        raise DatasetError(f"{folder}: not a dataset saved with save_to_disk (no dataset_dict.json or state.json). Fix: point "
                           f"data.{split}.dataset_dir at one, or use parquet_file for parquet files.")  # fmt: skip
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{folder}: no split '{split}' (it has {sorted(loaded)}). Fix: set data.<split>.split to one of them.")
        return loaded[split]
    return loaded


def class_names(dataset: Any, objects_column: str, source: str) -> list[str]:
    """The names of the ``category`` ClassLabel under ``objects_column`` (a dict of lists or a list of dicts)."""
    import datasets

    feature = dataset.features.get(objects_column)
    if isinstance(feature, datasets.List | datasets.Sequence) and isinstance(feature.feature, dict):
        feature = feature.feature  # a list of per-object dicts
    category = feature.get("category") if isinstance(feature, dict) else None
    while isinstance(category, datasets.List | datasets.Sequence):
        category = category.feature
    if not isinstance(category, datasets.ClassLabel):
        raise DatasetError(f"{source}: column '{objects_column}' has no 'category' ClassLabel naming the classes (its features: "
                           f"{feature}). Fix: set data.dataset.classes to the class names in index order.")  # fmt: skip
    return list(category.names)


def read_hf_split(dataset: Any, source: str, images_dir: Path, classes: list[str] | None = None, image_column: str = "image",
                  objects_column: str = "objects", max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                  header_cache: ImageHeaderCache | None = None) -> CocoRecords:  # fmt: skip
    """A detection ``datasets.Dataset`` as COCO records; its images are written under ``images_dir`` (once: an existing file is kept)."""
    import datasets

    for column in (image_column, objects_column):
        if column not in dataset.column_names:
            raise DatasetError(f"{source}: no column '{column}' (it has {dataset.column_names}). Fix: set data.dataset.image_column / "
                               "objects_column to the dataset's columns.")  # fmt: skip
    names = list(classes) if classes else class_names(dataset, objects_column, source)
    categories = [{"id": index, "name": name} for index, name in enumerate(names)]
    builder = RecordsBuilder(source, images_dir.resolve(), categories, max_image_pixels, header_cache or ImageHeaderCache())
    rows = dataset.cast_column(image_column, datasets.Image(decode=False))
    images_dir.mkdir(parents=True, exist_ok=True)
    for index in progress(range(len(rows)), f"reading the images of {source}"):
        row = rows[index]
        image_id = row["image_id"] if "image_id" in row else index
        objects = _object_lists(row[objects_column])
        path = _write_image(row[image_column], images_dir.resolve(), index)
        size = (row["width"], row["height"]) if row.get("width") and row.get("height") else None
        record = builder.image(image_id, path, f"image {image_id!r} (row {index})", len(objects["bbox"]), size=size)
        if record is None:
            continue
        for number, (bbox, category) in enumerate(zip(objects["bbox"], objects["category"], strict=True)):
            iscrowd = objects["iscrowd"][number] if objects.get("iscrowd") else 0
            # Numbered here: datasets number objects per image as often as across the dataset, and nothing refers to these ids.
            builder.annotations.append({"id": len(builder.annotations), "image_id": image_id, "category_id": category, "bbox": list(bbox), "iscrowd": iscrowd,
                                        **({"area": objects["area"][number]} if objects.get("area") else {})})  # fmt: skip
    return builder.records()


def _object_lists(objects: Any) -> dict[str, list[Any]]:
    """``objects`` as a dict of lists (the example's layout), also when it is a list of per-object dicts."""
    if isinstance(objects, list):
        keys = {key for item in objects for key in item}
        return {"bbox": [], "category": [], **{key: [item.get(key) for item in objects] for key in keys}}
    return {"bbox": [], "category": [], **dict(objects)}


def _write_image(image: dict[str, Any], images_dir: Path, index: int) -> Path:
    """The image's file in the cache, its encoded bytes written as they are (no re-encoding).

    A dataset of image paths (no embedded bytes) is copied from them; a path that does not exist
    is returned as it is, for the header check to name.
    """
    encoded = image.get("bytes")
    if encoded is None:
        source = Path(image.get("path") or "")
        if not source.is_file():
            return source
        encoded = source.read_bytes()
    suffix = Path(image.get("path") or "").suffix
    if not suffix:
        try:
            suffix = "." + read_image_header(io.BytesIO(encoded))["format"].lower()
        except ValueError:
            suffix = ".img"  # unreadable: the header check names the problem
    path = images_dir / f"{index:07d}{suffix}"
    if not path.is_file():
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(encoded)
        temporary.replace(path)  # a concurrent reader sees the whole file or none
    return path


class HfDetectionDataset(CocoDetectionDataset):
    """A split of a Hugging Face detection dataset (see the module doc), validated and read as COCO records.

    Args:
        split: the split of a saved ``DatasetDict`` (ignored for a single saved ``Dataset`` and parquet files).
        dataset_dir: a folder written by ``save_to_disk``; or
        parquet_file: parquet files (a path or a glob).
        images_cache_dir: where the images are written, in a folder per dataset fingerprint and split.
        classes: the class names by index, when the ``category`` column is no ``ClassLabel``.
        image_column, objects_column: the columns of the image and of its objects.
        options: as for :class:`~cvexp.data.coco.CocoDetectionDataset` (transform, on_invalid, ...).
    """

    def __init__(self, split: str | None = None, dataset_dir: str | None = None, parquet_file: str | None = None,
                 images_cache_dir: str = "hf_images", classes: list[str] | None = None, image_column: str = "image",
                 objects_column: str = "objects", **options: Any) -> None:  # fmt: skip
        dataset = load_split(split, dataset_dir, parquet_file)
        source = str(dataset_dir or parquet_file)
        images_dir = Path(images_cache_dir) / f"{dataset._fingerprint}"
        options["header_cache"] = options.get("header_cache") or ImageHeaderCache()
        records = read_hf_split(dataset, source, images_dir, classes, image_column, objects_column,
                                options.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS), options["header_cache"])  # fmt: skip
        super().__init__(str(images_dir.resolve()), records=records, **options)
