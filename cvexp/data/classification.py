"""Image-classification datasets, each validated record by record before anything trains.

Two layouts:

- :class:`ImageFolderDataset`: torchvision's ``ImageFolder`` layout, ``images_dir/<class name>/<image>``.
  The classes are the sorted names of the subfolders (category ids ``0..K-1`` in that order); a
  class folder without images still defines its class, so that every split of one dataset has the
  same classes even when a rare one is missing from a small split.
- :class:`ClassificationCsvDataset`: Roboflow's "multi-class CSV" export, the images beside a
  ``_classes.csv`` whose header is ``filename, ClassA, ClassB, ...`` and whose rows are one-hot
  (``0``/``1``) per class. Roboflow separates cells with ``", "``; the spaces around every name and
  value are stripped. The classes are the columns, in order (category ids ``0..K-1``).

Validation reuses the COCO reader's building blocks (:mod:`cvexp.data.validation`): every image's
header is read through :func:`~cvexp.data.validation.read_image_header` and the
:class:`~cvexp.data.validation.ImageHeaderCache` (a second run reads only what changed), checked
against ``max_image_pixels`` with :func:`~cvexp.data.validation.pixel_limit_problem`, and every bad
record becomes a :class:`~cvexp.data.validation.Problem` naming the file, the record, the field and
the fix. Under ``on_invalid="raise"`` the first one stops with a
:class:`~cvexp.errors.DatasetError`; under ``"skip"`` the record is dropped and listed in the
:class:`~cvexp.data.validation.SplitReport`. What no skipping repairs (no class folders, a CSV
without header, class columns or rows, a split left without images) always raises.

The classification targets hold one record per image, so ``report.annotations`` stays 0: a
dropped label is a dropped image.

The checks every folder reader shares live in :mod:`cvexp.data.readers`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.data.dataset import LabelledImageDataset
from cvexp.data.labels import Category
from cvexp.data.readers import (
    CLASSES_FILE,
    IMAGE_EXTENSIONS,
    check_image_file,
    check_policy,
    confined_path,
    finish_split,
    list_image_files,
    progress,
    read_csv_rows,
    require_folder,
    split_label,
    warn_ignored,
)
from cvexp.data.targets import ClassificationTarget, Sample
from cvexp.data.validation import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageHeaderCache,
    InvalidPolicy,
    Problem,
    SplitReport,
    _Collector,
)
from cvexp.errors import DatasetError


class _ClassificationDataset(LabelledImageDataset):
    """What both classification layouts share: the sample (the image, augmented, and its class)."""

    def __init__(self, images_dir: Path, images: dict[int, dict[str, Any]], categories: list[Category], report: SplitReport,
                 transform: Any | None, on_invalid: InvalidPolicy, cache_images: bool, max_image_pixels: int | None,
                 name: str) -> None:  # fmt: skip
        super().__init__(images_dir, images, categories, report, transform, on_invalid, cache_images, max_image_pixels, name)
        # As the COCO dataset holds them: check_same_categories compares the splits' ids and names.
        self.categories: list[dict[str, Any]] = [{"id": c.id, "name": c.name} for c in categories]

    def image_classes(self) -> list[set[int]]:
        return [{int(self.images[image_id]["category_id"])} for image_id in self.image_ids]

    def sample(self, image_id: int, image: np.ndarray) -> Sample:
        """The (augmented) image and its class; ``size`` is the augmented image's ``(height, width)``."""
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        record = self.images[image_id]
        target = ClassificationTarget(int(image_id), int(record["category_id"]), (int(image.shape[0]), int(image.shape[1])), record["file_name"])
        return Sample(image=image, target=target)


class ImageFolderDataset(_ClassificationDataset):
    """One split in torchvision's ``ImageFolder`` layout: ``images_dir/<class name>/<image>``, validated up front.

    - Classes: the subfolders of ``images_dir``, sorted by name, category ids ``0..K-1`` in that
      order. A class folder without images still defines its class. No class folder at all always
      raises. Hidden folders (``.ipynb_checkpoints``) are not classes.
    - Images: every file with an image extension (:data:`IMAGE_EXTENSIONS`) anywhere under a class
      folder; image ids ``0..N-1`` in sorted order of their path, assigned before validation, so an
      image keeps its id whether or not another is dropped. ``file_name`` is relative to
      ``images_dir`` (``cat/001.jpg``). Other files, and files directly in ``images_dir``, are
      ignored with a warning that names them.
    - Checks per image, as the COCO reader does: the header opens, the pixel count is under
      ``max_image_pixels``.

    Args:
        images_dir: the split's folder of class folders.
        transform: an albumentations ``Compose`` without bbox params, called as ``transform(image=image)``.
        on_invalid: ``raise`` stops at the first bad image with a message naming it; ``skip`` drops
            it and lists it in ``report``.
        cache_images: keep each decoded image in memory after its first read (per DataLoader worker).
        max_image_pixels: the largest image accepted (width x height), a decompression-bomb guard.
        header_cache: remembers checked image headers between runs (:class:`ImageHeaderCache`).
        name: the split's name (train, val, test), for messages.
    """

    def __init__(self, images_dir: str | Path, transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, header_cache: ImageHeaderCache | None = None,
                 name: str = "") -> None:  # fmt: skip
        check_policy(on_invalid)
        root = require_folder(Path(images_dir), name, "images folder", "images_dir")
        class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        if not class_dirs:
            raise DatasetError(f"{root}: no class folders: the ImageFolder layout is images_dir/<class name>/<image>. Fix: put each class's "
                               f"images in a folder named after it, or point {split_label(name)[1]}.images_dir at such a folder.")  # fmt: skip
        categories = [Category(index, folder.name) for index, folder in enumerate(class_dirs)]
        category_of = {category.name: category.id for category in categories}
        files, ignored = list_image_files(root, recursive=True)
        # A file directly in images_dir belongs to no class (files in hidden folders are ignored already).
        unclassed = [f for f in files if len(f.parts) < 2]
        files = [f for f in files if len(f.parts) >= 2]
        warn_ignored(root, sorted(ignored + unclassed), f"not an image by extension {IMAGE_EXTENSIONS}, hidden, or outside a class folder")

        report = SplitReport(name, str(root), images=len(files))
        reject = _Collector(report, on_invalid)
        cache = header_cache or ImageHeaderCache()
        images: dict[int, dict[str, Any]] = {}
        for image_id, relative in enumerate(progress(files, f"checking the images of {root}")):
            file_name = relative.as_posix()
            header = check_image_file(root / relative, f"image {image_id} ('{file_name}')", reject, max_image_pixels, cache)
            if header is not None:
                images[image_id] = {"file_name": file_name, "category_id": category_of[relative.parts[0]],
                                    "width": header["width"], "height": header["height"]}  # fmt: skip
        cache.save()
        finish_split(report, len(images), root, name)
        super().__init__(root, images, categories, report, transform, on_invalid, cache_images, max_image_pixels, name)


class ClassificationCsvDataset(_ClassificationDataset):
    """One split of Roboflow's multi-class CSV export: images beside a one-hot ``_classes.csv``, validated up front.

    The CSV's header is ``filename, ClassA, ClassB, ...`` (cells separated by ``,``, spaces around
    them stripped: Roboflow writes ``", "``); each row names an image relative to ``images_dir`` and
    holds ``1`` in the column of its class, ``0`` in the others. Classes: the columns in order,
    category ids ``0..K-1``. Image ids: ``0..N-1`` in row order, assigned before validation.

    A row is a problem when (kind in brackets): it has more or fewer cells than the header [row
    length differs from the header]; its filename is empty [image file_name missing]; another row
    names the same file [duplicate filename: all such rows are dropped, which label is meant cannot
    be told]; the name is absolute or leads out of ``images_dir`` [image file outside the images
    folder]; a class cell is not ``0`` or ``1`` [label not 0 or 1]; no class has a ``1`` [row without a
    label] or several do [row with several labels: this reader is single-label]; the file does not
    exist [image file missing]; its header does not open [image file unreadable] or it is above
    ``max_image_pixels`` [image above the pixel limit]. Messages name the file, ``row <line number>
    ('<filename>')`` (the header is row 1, as a spreadsheet numbers it), the field (``filename``, a
    class column, ``labels``, ``file``) and the fix.

    A CSV without a header, without class columns or without rows always raises. Images in
    ``images_dir`` that the CSV does not list are not read; a warning names them.

    Args:
        images_dir: the split's folder.
        csv_file: the CSV; default ``images_dir/_classes.csv``.
        transform, on_invalid, cache_images, max_image_pixels, header_cache, name: as for
            :class:`ImageFolderDataset`.
    """

    def __init__(self, images_dir: str | Path, csv_file: str | Path | None = None, transform: Any | None = None,
                 on_invalid: InvalidPolicy = "raise", cache_images: bool = False, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 header_cache: ImageHeaderCache | None = None, name: str = "") -> None:  # fmt: skip
        check_policy(on_invalid)
        root = require_folder(Path(images_dir), name, "images folder", "images_dir")
        self.csv_path = Path(csv_file) if csv_file else root / CLASSES_FILE
        rows = list(read_csv_rows(self.csv_path, "classification CSV", f"point {split_label(name)[1]}.csv_file at the split's "
                                  f"one-hot CSV (Roboflow's multi-class CSV export puts {CLASSES_FILE} beside the images)."))  # fmt: skip
        categories = _csv_categories(self.csv_path, rows)
        body = rows[1:]
        if not body:
            raise DatasetError(f"{self.csv_path}: the CSV lists no images (only its header). Fix: export the split with its images, "
                               f"or leave {split_label(name)[1]} out of the data config.")  # fmt: skip

        report = SplitReport(name, str(self.csv_path), images=len(body))
        reject = _Collector(report, on_invalid)
        cache = header_cache or ImageHeaderCache()
        lines_of: dict[str, list[int]] = {}
        for line, cells in body:
            lines_of.setdefault(cells[0], []).append(line)
        images: dict[int, dict[str, Any]] = {}
        for image_id, (line, cells) in enumerate(progress(body, f"checking the images of {self.csv_path}")):
            record = _csv_record(line, cells, categories, root, self.csv_path, lines_of, reject, max_image_pixels, cache)
            if record is not None:
                images[image_id] = record
        cache.save()
        listed = {Path(cells[0]).as_posix() for _, cells in body}
        unlisted = [f for f in list_image_files(root, recursive=True)[0] if f.as_posix() not in listed]
        warn_ignored(root, unlisted, f"images that {self.csv_path.name} does not list, so without a label")
        finish_split(report, len(images), self.csv_path, name)
        super().__init__(root, images, categories, report, transform, on_invalid, cache_images, max_image_pixels, name)


def _csv_categories(path: Path, rows: list[tuple[int, list[str]]]) -> list[Category]:
    """The classes of a one-hot CSV's header (``filename, A, B, ...``); anything else is a :class:`DatasetError`."""
    expected = "Fix: the first row must be the header 'filename, <class>, <class>, ...' (as Roboflow's multi-class CSV export writes it)."
    if not rows:
        raise DatasetError(f"{path}: the file is empty: no header, no rows. {expected}")
    line, header = rows[0]
    if header[0].lower() != "filename":
        raise DatasetError(f"{path}: row {line} is {', '.join(header)!r}, not a header starting with 'filename'. {expected}")
    names = header[1:]
    if not names:
        raise DatasetError(f"{path}: the header has no class columns, only 'filename'. {expected}")
    if not all(names):
        raise DatasetError(f"{path}: the header has an empty class name in column {names.index('') + 2}. Fix: name every class column.")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DatasetError(f"{path}: the header names the classes {repeated} more than once. Fix: give every class column its own name.")
    return [Category(index, name) for index, name in enumerate(names)]


def _csv_record(line: int, cells: list[str], categories: list[Category], root: Path, csv_path: Path, lines_of: dict[str, list[int]],
                reject: _Collector, max_image_pixels: int | None, cache: ImageHeaderCache) -> dict[str, Any] | None:  # fmt: skip
    """The record of one CSV row (``file_name``, ``category_id``, upright ``width``/``height``), or ``None`` after rejecting it."""
    file = str(csv_path)
    name = cells[0]
    where = f"row {line} ('{name}')"
    if len(cells) != len(categories) + 1:
        reject(Problem("row length differs from the header", file, where, "row",
                       f"{len(cells)} cells, the header has {len(categories) + 1} (filename and {len(categories)} classes)"))  # fmt: skip
        return None
    if not name:
        reject(Problem("image file_name missing", file, where, "filename", "the filename cell is empty"))
        return None
    if len(lines_of[name]) > 1:
        # Which row's label is meant cannot be told: all are dropped (as the COCO reader drops images sharing an id).
        reject(Problem("duplicate filename", file, where, "filename",
                       f"{len(lines_of[name])} rows name '{name}' (rows {', '.join(map(str, lines_of[name]))}); keep one row per image"))  # fmt: skip
        return None
    path = confined_path(root, name)
    if path is None:
        reject(Problem("image file outside the images folder", file, where, "filename",
                       f"'{name}' points outside the images folder {root.resolve()}; names are relative to it"))  # fmt: skip
        return None
    for category, value in zip(categories, cells[1:], strict=True):
        if value not in ("0", "1"):
            reject(Problem("label not 0 or 1", file, where, category.name, f"{value!r} is not 0 or 1 (the class columns are one-hot)"))
            return None
    labels = [category for category, value in zip(categories, cells[1:], strict=True) if value == "1"]
    if not labels:
        reject(Problem("row without a label", file, where, "labels",
                       f"every class column ({', '.join(c.name for c in categories)}) is 0; a row needs exactly one 1"))  # fmt: skip
        return None
    if len(labels) > 1:
        reject(Problem("row with several labels", file, where, "/".join(c.name for c in labels),
                       f"{len(labels)} classes are 1; this reader is single-label (one class per image), so keep one"))  # fmt: skip
        return None
    if not path.is_file():
        reject(Problem("image file missing", file, where, "filename", f"'{name}' is not in {root}"))
        return None
    header = check_image_file(path, where, reject, max_image_pixels, cache)
    if header is None:
        return None
    return {"file_name": name, "category_id": labels[0].id, "width": header["width"], "height": header["height"]}


__all__ = ["ClassificationCsvDataset", "ImageFolderDataset"]
