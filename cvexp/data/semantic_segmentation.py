"""Semantic-segmentation datasets: images with class-index mask PNGs, each pair validated before anything trains.

Two layouts:

- :class:`RoboflowMaskDataset`: Roboflow's ``png-mask-semantic`` export: ``NAME.jpg`` beside
  ``NAME_mask.png`` and a ``_classes.csv`` (``Pixel Value, Class``) in each split folder.
- :class:`MaskFolderDataset`: an ``images/`` and a ``masks/`` folder, the mask of ``images/a.jpg``
  being ``masks/a.png``; the classes from a ``_classes.csv`` like Roboflow's or from a list of names.

A mask is an 8-bit single-channel image whose pixel values are the dataset's category ids (mode
``L``; mode ``P`` is read as its palette indices, never its colours); :data:`~cvexp.data.targets.IGNORE_INDEX`
(255) marks unlabelled pixels, which no loss or metric counts. Categories are
``Category(id=pixel value, name)`` in pixel-value order.

Validation, per image (kind of problem in brackets; field ``file`` for the image, ``mask`` for the mask):

- the image, as the COCO reader checks it: the header opens [image file unreadable], the pixel
  count is under ``max_image_pixels`` [image above the pixel limit];
- its mask exists [mask file missing] and no other image claims the same mask name [images share
  a mask name];
- the mask's header opens and its pixels decode [mask file unreadable], it is under the pixel
  limit [mask above the pixel limit], it is mode ``L`` or ``P`` [mask not 8-bit single-channel: the
  fix is to convert colour masks to class-index PNGs];
- its size is the image's [mask size differs from the image]. Both sizes are taken upright, as
  their EXIF orientation shows them, because training reads them so
  (:func:`cvexp.data.images.load_rgb_image` applies ``exif_transpose``, and so does the mask loader
  here): a mask drawn on a photo's stored pixels while the photo carries a 90-degree EXIF
  orientation is refused, not silently misaligned;
- every pixel value is a known class id or 255 [mask value unknown].

Checking the values decodes every mask once: about 3.5 ms for a 640x640 PNG, so validating the
360 image/mask pairs of the indoor-seg dataset takes about 2 s on two cores. The values found are
kept with the mask's header in the :class:`~cvexp.data.validation.ImageHeaderCache`, so a run with a
persistent header cache decodes only the masks that changed since.

Under ``on_invalid="raise"`` the first problem stops with a :class:`~cvexp.errors.DatasetError`
naming the file, the record (``image 3 ('a.jpg')``), the field and the fix; under ``"skip"`` the
image is dropped and listed in the :class:`~cvexp.data.validation.SplitReport`. A classes file that
cannot be read, and a split left without images, always raise. The masks are the annotations of a
mask dataset but hold one record per image, so ``report.annotations`` stays 0.

Augmentation: the transform is called as ``transform(image=image, mask=mask)``; albumentations
moves the mask with the pixels, resampling it nearest-neighbour. Transforms that pad or rotate fill
new mask pixels with their ``fill_mask`` (0 by default, which would label them class 0): set
``fill_mask=255`` to leave them unlabelled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from cvexp.data.dataset import LabelledImageDataset, cached_array
from cvexp.data.images import UnreadableImage
from cvexp.data.labels import Category
from cvexp.data.readers import (
    CLASSES_FILE,
    IMAGE_EXTENSIONS,
    check_image_file,
    check_policy,
    finish_split,
    list_image_files,
    progress,
    read_csv_rows,
    require_folder,
    split_label,
    warn_ignored,
)
from cvexp.data.targets import IGNORE_INDEX, Sample, SegmentationTarget
from cvexp.data.validation import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageHeaderCache,
    InvalidPolicy,
    Problem,
    SplitReport,
    _Collector,
)
from cvexp.errors import ConfigError, DatasetError

#: The Pillow modes a mask may have: 8-bit grey, or a palette image read as its indices.
MASK_MODES = ("L", "P")
_CONVERT = ("convert it to a class-index PNG: one channel (mode L), each pixel's value its class id, "
            f"{IGNORE_INDEX} where unlabelled (a colour mask needs each colour mapped to its class id)")  # fmt: skip


def read_classes_file(path: Path, fix: str) -> list[Category]:
    """The classes of a Roboflow ``_classes.csv`` (header ``Pixel Value, Class``), in pixel-value order.

    Every problem is a :class:`DatasetError` (``fix`` says where the file should come from): a
    missing or empty file, another header, no classes, a row that is not ``<int>, <name>``, a pixel
    value outside 0..254 (255 is :data:`IGNORE_INDEX`), a value or a name listed twice.
    """
    rows = list(read_csv_rows(path, "classes file", fix))
    header_fix = "Fix: the first row must be the header 'Pixel Value, Class' (as Roboflow's png-mask-semantic export writes it)."
    if not rows:
        raise DatasetError(f"{path}: the file is empty: no header, no classes. {header_fix}")
    line, header = rows[0]
    if [cell.lower() for cell in header] != ["pixel value", "class"]:
        raise DatasetError(f"{path}: row {line} is {', '.join(header)!r}, not the header 'Pixel Value, Class'. {header_fix}")
    if len(rows) == 1:
        raise DatasetError(f"{path}: the file lists no classes (only its header). Fix: one row '<pixel value>, <class name>' per class.")
    categories: list[Category] = []
    for line, cells in rows[1:]:
        where = f"{path}: row {line} ({', '.join(cells)!r})"
        if len(cells) != 2 or not cells[1]:
            raise DatasetError(f"{where}: not '<pixel value>, <class name>'. Fix: one pixel value and one class name per row.")
        value, name = cells
        if not (value.isascii() and value.isdigit()):
            raise DatasetError(f"{where}: Pixel Value: {value!r} is not a whole number. Fix: give the class's pixel value in the masks.")
        if int(value) >= IGNORE_INDEX:
            raise DatasetError(f"{where}: Pixel Value: {value} is not in 0..{IGNORE_INDEX - 1}: 8-bit masks end at 255, and {IGNORE_INDEX} "
                               "marks unlabelled pixels. Fix: renumber the classes below 255.")  # fmt: skip
        categories.append(Category(int(value), name))
    for what, values in (("pixel values", [c.id for c in categories]), ("class names", [c.name for c in categories])):
        repeated = sorted(v for v, count in Counter(values).items() if count > 1)
        if repeated:
            raise DatasetError(f"{path}: the {what} {repeated} are listed more than once. Fix: one row per class, each with its own value and name.")
    return sorted(categories, key=lambda c: c.id)


def load_mask(path: Path) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 class ids: mode ``L`` as is, mode ``P`` as its palette indices (not its colours).

    Upright as its EXIF orientation says, as the image is read (:func:`cvexp.data.images.load_rgb_image`).
    Raises ``ValueError`` for another mode.
    """
    with Image.open(path) as mask:
        if mask.mode not in MASK_MODES:
            raise ValueError(f"the mask's mode is {mask.mode}, not one of {MASK_MODES}")
        return np.array(ImageOps.exif_transpose(mask), dtype=np.uint8)


def mask_values(path: Path) -> list[int]:
    """The distinct pixel values of a mask file of mode ``L`` or ``P`` (palette indices), decoding it whole.

    Raises ``ValueError`` saying why it cannot be read. Pillow's histogram counts the values in C:
    faster than numpy's ``bincount`` on the decoded array; orientation does not change the values.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # The caller checked the size against data.max_image_pixels; Pillow's own fixed limit is lifted, as for headers.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as mask:
            if mask.mode not in MASK_MODES:
                raise ValueError(f"the mask's mode is {mask.mode}, not one of {MASK_MODES}")
            histogram = mask.histogram()
    except (OSError, SyntaxError) as error:  # a truncated or corrupt PNG stream
        raise ValueError(f"its pixels do not decode ({type(error).__name__}: {error})") from error
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return [value for value, count in enumerate(histogram) if count]


def check_mask(path: Path, where: str, image: dict[str, Any], known_ids: set[int], reject: _Collector, max_image_pixels: int | None,
               cache: ImageHeaderCache) -> bool:  # fmt: skip
    """Whether the mask at ``path`` fits the image of header ``image``; otherwise rejects the record (see the module doc)."""
    if not path.is_file():
        reject(Problem("mask file missing", str(path), where, "mask", f"the image's mask '{path.name}' is not in {path.parent}"))
        return False
    header = check_image_file(path, where, reject, max_image_pixels, cache, what="mask")
    if header is None:
        return False
    if header["mode"] not in MASK_MODES:
        reject(Problem("mask not 8-bit single-channel", str(path), where, "mask", f"its mode is {header['mode']}, not L or P; {_CONVERT}"))
        return False
    size, image_size = (header["width"], header["height"]), (image["width"], image["height"])
    if size != image_size:
        hint = ("; the mask has the size of the image's stored pixels, before their EXIF rotation: it was drawn ignoring the "
                "image's EXIF orientation, so rotate the mask to the upright image (or save the image upright, without the "
                "orientation tag)") if size == image_size[::-1] else ""  # fmt: skip
        reject(Problem("mask size differs from the image", str(path), where, "mask",
                       f"the mask is {size[0]}x{size[1]}, the image {image_size[0]}x{image_size[1]} (both upright, as their EXIF "
                       f"orientation shows them and training reads them){hint}; a mask labels its image pixel for pixel"))  # fmt: skip
        return False
    stat = path.stat()
    entry = cache.get(path, stat) or {}
    values = entry.get("mask_values")
    if values is None:
        try:
            values = mask_values(path)
        except ValueError as error:
            reject(Problem("mask file unreadable", str(path), where, "mask", str(error)))
            return False
        # Kept with the header: a second run with a persistent cache decodes only the masks that changed.
        cache.put(path, stat, {**{k: v for k, v in header.items() if k not in ("size", "mtime_ns")}, "mask_values": values})
    unknown = sorted(set(values) - known_ids - {IGNORE_INDEX})
    if unknown:
        reject(Problem("mask value unknown", str(path), where, "mask",
                       f"pixel values {unknown} are neither class ids ({sorted(known_ids)}) nor {IGNORE_INDEX} (unlabelled); add the "
                       f"classes to the class list, or set those pixels to {IGNORE_INDEX}"))  # fmt: skip
        return False
    return True


class _SegmentationDataset(LabelledImageDataset):
    """What both mask layouts share: validating the (image, mask) pairs, and the sample (image and mask, augmented together)."""

    def __init__(self, images_dir: Path, masks_dir: Path, pairs: list[tuple[str, str]], categories: list[Category], source: Path,
                 transform: Any | None, on_invalid: InvalidPolicy, cache_images: bool, max_image_pixels: int | None,
                 header_cache: ImageHeaderCache | None, name: str) -> None:  # fmt: skip
        self.masks_dir = masks_dir
        report = SplitReport(name, str(source), images=len(pairs))
        reject = _Collector(report, on_invalid)
        cache = header_cache or ImageHeaderCache()
        known_ids = {category.id for category in categories}
        claims = Counter(mask for _, mask in pairs)
        images: dict[int, dict[str, Any]] = {}
        # Image ids 0..N-1 in sorted order of the images' names, assigned before validation: an image keeps its id whatever else is dropped.
        for image_id, (file_name, mask_name) in enumerate(progress(pairs, f"checking the images and masks of {images_dir}")):
            where = f"image {image_id} ('{file_name}')"
            mask_path = masks_dir / mask_name
            if claims[mask_name] > 1:
                others = sorted(f for f, m in pairs if m == mask_name and f != file_name)
                reject(Problem("images share a mask name", str(mask_path), where, "mask",
                               f"{', '.join(map(repr, others))} also maps to the mask '{mask_name}', so whose mask it is cannot be told; "
                               "rename the images apart"))  # fmt: skip
                continue
            header = check_image_file(images_dir / file_name, where, reject, max_image_pixels, cache)
            if header is None or not check_mask(mask_path, where, header, known_ids, reject, max_image_pixels, cache):
                continue
            images[image_id] = {"file_name": file_name, "mask_file": mask_name, "width": header["width"], "height": header["height"]}
        cache.save()
        finish_split(report, len(images), source, name)
        super().__init__(images_dir, images, categories, report, transform, on_invalid, cache_images, max_image_pixels, name)
        # As the COCO dataset holds them: check_same_categories compares the splits' ids and names.
        self.categories: list[dict[str, Any]] = [{"id": c.id, "name": c.name} for c in categories]
        self._mask_cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def mask_path(self, image_id: int) -> Path:
        """The mask file of ``image_id``."""
        return self.masks_dir / self.images[image_id]["mask_file"]

    def sample(self, image_id: int, image: np.ndarray) -> Sample | UnreadableImage:  # type: ignore[override]
        """The (augmented) image and its mask as ``torch.int64`` category ids (255: unlabelled), moved together.

        A mask that no longer reads as it did at validation (changed since, disk error) raises a
        :class:`DatasetError` naming it, or under ``on_invalid=skip`` makes the sample an
        :class:`UnreadableImage`, which the collator leaves out and counts, as an unreadable image does.
        """
        record = self.images[image_id]
        try:
            mask = self._load_mask(image_id)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.shape[1]}x{image.shape[0]}")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
            path = self.mask_path(image_id)
            if self.on_invalid == "raise":
                raise DatasetError(f"{path}: the mask of image {image_id} ('{record['file_name']}') cannot be read ({type(error).__name__}: "
                                   f"{error}); it passed validation before training, so it changed since or the disk failed. Fix: restore "
                                   "the file, or set data.on_invalid=skip to skip such images (counted in the run's summary).") from error  # fmt: skip
            return UnreadableImage(image_id, str(path), f"{type(error).__name__}: {error}")
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        target = SegmentationTarget(int(image_id), torch.from_numpy(np.asarray(mask).astype(np.int64)),
                                    (int(image.shape[0]), int(image.shape[1])), record["file_name"])  # fmt: skip
        return Sample(image=image, target=target)

    def _load_mask(self, image_id: int) -> np.ndarray:
        return cached_array(self._mask_cache, image_id, lambda: load_mask(self.mask_path(image_id)))


class RoboflowMaskDataset(_SegmentationDataset):
    """One split of Roboflow's ``png-mask-semantic`` export: ``NAME.jpg`` beside ``NAME_mask.png`` and ``_classes.csv``.

    Images: the files of ``images_dir`` with an image extension (:data:`IMAGE_EXTENSIONS`) whose
    names do not end in ``mask_suffix``, in sorted order (image ids ``0..N-1``). The mask of
    ``NAME.jpg`` is ``NAME`` + ``mask_suffix``. Classes: the classes file's rows
    (``Pixel Value, Class``, spaces after the commas allowed), ``Category(id=pixel value,
    name=class)`` in pixel-value order. Masks without an image and other files are not read; a
    warning names them. See the module doc for the checks.

    Args:
        images_dir: the split's folder.
        classes_file: the class list; default ``images_dir/_classes.csv``.
        mask_suffix: what replaces an image's extension to name its mask.
        transform: an albumentations ``Compose`` without bbox params, called as ``transform(image=image, mask=mask)``.
        on_invalid: ``raise`` stops at the first bad image or mask with a message naming it;
            ``skip`` drops the image and lists it in ``report``.
        cache_images: keep each decoded image and mask in memory after its first read (per DataLoader worker).
        max_image_pixels: the largest image or mask accepted (width x height), a decompression-bomb guard.
        header_cache: remembers checked headers (and the masks' values) between runs (:class:`ImageHeaderCache`).
        name: the split's name (train, val, test), for messages.
    """

    def __init__(self, images_dir: str | Path, classes_file: str | Path | None = None, mask_suffix: str = "_mask.png",
                 transform: Any | None = None, on_invalid: InvalidPolicy = "raise", cache_images: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, header_cache: ImageHeaderCache | None = None,
                 name: str = "") -> None:  # fmt: skip
        check_policy(on_invalid)
        if not mask_suffix:
            raise ConfigError("mask_suffix is empty: a mask beside its image needs a suffix of its own (Roboflow's is '_mask.png').")
        root = require_folder(Path(images_dir), name, "images folder", "images_dir")
        self.classes_path = Path(classes_file) if classes_file else root / CLASSES_FILE
        categories = read_classes_file(self.classes_path, f"point {split_label(name)[1]}.classes_file at the split's class list "
                                       f"(Roboflow's png-mask-semantic export puts {CLASSES_FILE} beside the images).")  # fmt: skip
        files, ignored = list_image_files(root, recursive=False)
        images = [f.as_posix() for f in files if not f.name.endswith(mask_suffix)]
        pairs = [(image, _mask_name(image, mask_suffix)) for image in images]
        claimed = {mask for _, mask in pairs}
        orphans = [f for f in files if f.name.endswith(mask_suffix) and f.as_posix() not in claimed]
        ignored = [f for f in ignored if (root / f).resolve() != self.classes_path.resolve()]
        warn_ignored(root, orphans, f"masks ('*{mask_suffix}') without an image")
        warn_ignored(root, ignored, f"not an image by extension {IMAGE_EXTENSIONS}, or hidden")
        super().__init__(root, root, pairs, categories, self.classes_path, transform, on_invalid, cache_images, max_image_pixels,
                         header_cache, name)  # fmt: skip


class MaskFolderDataset(_SegmentationDataset):
    """One split as a pair of folders: ``images_dir/a.jpg`` and its mask ``masks_dir/a.png``.

    Images: the files under ``images_dir`` (subfolders included, mirrored in ``masks_dir``) with
    an image extension, in sorted order of their relative path (image ids ``0..N-1``). The mask of
    ``x/a.jpg`` is ``masks_dir/x/a`` + ``mask_suffix`` (the suffix replaces the extension). Masks
    without an image and other files are not read; a warning names them. See the module doc for
    the checks.

    Classes come from exactly one of:

    - ``classes_file``: a class list like Roboflow's ``_classes.csv`` (``Pixel Value, Class``);
    - ``classes``: the class names, the pixel value of each being its index in the list.

    Args:
        images_dir: the split's images.
        masks_dir: their masks (another folder; for masks beside their images see :class:`RoboflowMaskDataset`).
        classes_file, classes: the classes (one of the two).
        mask_suffix: what replaces an image's extension to name its mask.
        transform, on_invalid, cache_images, max_image_pixels, header_cache, name: as for :class:`RoboflowMaskDataset`.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, classes_file: str | Path | None = None,
                 classes: Sequence[str] | None = None, mask_suffix: str = ".png", transform: Any | None = None,
                 on_invalid: InvalidPolicy = "raise", cache_images: bool = False, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 header_cache: ImageHeaderCache | None = None, name: str = "") -> None:  # fmt: skip
        check_policy(on_invalid)
        setting = split_label(name)[1]
        root = require_folder(Path(images_dir), name, "images folder", "images_dir")
        masks_root = require_folder(Path(masks_dir), name, "masks folder", "masks_dir")
        if masks_root.resolve() == root.resolve():
            raise ConfigError(f"{setting}.masks_dir is the images folder {root}: every image would be read as a mask too. Use "
                              "RoboflowMaskDataset (masks named NAME_mask.png beside their images), or keep the masks in a folder of their own.")  # fmt: skip
        if (classes_file is None) == (classes is None):
            raise ConfigError(f"{setting}: give the classes either as classes_file (a _classes.csv of 'Pixel Value, Class') or as classes "
                              f"(names, pixel value = index), exactly one of the two; got classes_file={classes_file!r}, classes={classes!r}.")  # fmt: skip
        self.classes_path = Path(classes_file) if classes_file is not None else None
        if self.classes_path is not None:
            categories = read_classes_file(self.classes_path, f"point {setting}.classes_file at the split's class list.")
        else:
            categories = _named_categories(list(classes or []), setting)
        files, ignored = list_image_files(root, recursive=True)
        pairs = [(f.as_posix(), _mask_name(f.as_posix(), mask_suffix)) for f in files]
        claimed = {mask for _, mask in pairs}
        masks, _ = list_image_files(masks_root, recursive=True)
        warn_ignored(masks_root, [m for m in masks if m.as_posix() not in claimed], "masks without an image")
        warn_ignored(root, ignored, f"not an image by extension {IMAGE_EXTENSIONS}, or hidden")
        source = self.classes_path if self.classes_path is not None else masks_root
        super().__init__(root, masks_root, pairs, categories, source, transform, on_invalid, cache_images, max_image_pixels, header_cache, name)


def _mask_name(image_name: str, mask_suffix: str) -> str:
    """The mask's name for an image's (relative, posix) name: the extension replaced by ``mask_suffix``."""
    return Path(image_name).with_suffix("").as_posix() + mask_suffix


def _named_categories(names: list[Any], setting: str) -> list[Category]:
    """``Category(index, name)`` for a list of class names; the list must be non-empty, of distinct non-empty strings, under 255 long."""
    if not names:
        raise ConfigError(f"{setting}.classes is empty: list the class names, the pixel value of each being its index.")
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{setting}.classes = {names!r}: every class name must be a non-empty string.")
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise ConfigError(f"{setting}.classes names {repeated} more than once: each class needs its own name.")
    if len(names) > IGNORE_INDEX:
        raise ConfigError(f"{setting}.classes has {len(names)} names: 8-bit masks hold pixel values 0..{IGNORE_INDEX - 1} for classes "
                          f"({IGNORE_INDEX} marks unlabelled pixels).")  # fmt: skip
    return [Category(index, name) for index, name in enumerate(names)]


__all__ = ["MASK_MODES", "MaskFolderDataset", "RoboflowMaskDataset", "check_mask", "load_mask", "mask_values", "read_classes_file"]
