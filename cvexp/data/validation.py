"""Validation of COCO detection splits before anything trains: every record, every image header.

:func:`validate_coco_split` reads one split's annotation file and checks, record by record:

- the file: valid JSON with ``images``, ``annotations`` and ``categories`` lists; categories with
  unique integer ids and names;
- images: integer ids, unique; a ``file_name`` inside the images folder (no ``../``, no absolute
  path); the file exists, its header opens (not empty, not truncated at the header, an image format
  Pillow knows), its pixel count is under ``max_image_pixels`` (Pillow's decompression-bomb guard),
  and its size is the ``width`` / ``height`` the record gives (taken from the file when absent);
- annotations: integer ids, unique; an ``image_id`` that names an image of the file; a known
  ``category_id``; a ``bbox`` of four finite numbers with non-negative width and height;
  ``iscrowd`` 0 or 1. A box that overhangs the image is clipped to it and counted; one without
  area after clipping (zero width or height, or entirely outside) is a problem.

With ``on_invalid="raise"`` the first problem stops with a :class:`~cvexp.data.coco.DatasetError`
naming the file, the record, the field and the fix. With ``on_invalid="skip"`` the record is dropped
(an image with its annotations) and listed in the :class:`SplitReport`, counted per kind of
problem. Problems no skipping can fix (a malformed file, a split left without images, categories
that differ between splits) always raise.

Image headers are checked once per file version: :class:`ImageHeaderCache` remembers each file's
size, modification time and header, so a second run reads only what changed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from PIL import Image

from cvexp.errors import DatasetError

InvalidPolicy = Literal["raise", "skip"]
# Pillow's own default decompression-bomb limit (about 89.5 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_FIX_OR_SKIP = "Fix the record, or set data.on_invalid=skip to drop it (listed in the run's data_validation.json)."


@dataclass(frozen=True)
class Problem:
    """One bad record: where it is, what is wrong, and what to do about it."""

    kind: str  # a short name shared by every problem of its sort, for the counts
    file: str  # the annotation file (or the image file)
    record: str  # "image 3 ('a.png')", "annotation 17 (image 3, 'a.png')"
    field: str
    message: str

    def text(self) -> str:
        return f"{self.file}: {self.record}: {self.field}: {self.message}."


@dataclass
class SplitReport:
    """What validation kept, clipped and dropped in one split."""

    split: str
    annotation_file: str
    images: int = 0  # records in the file
    images_kept: int = 0
    annotations: int = 0
    annotations_kept: int = 0
    boxes_clipped: int = 0
    dropped: list[Problem] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Dropped records per kind of problem."""
        return dict(Counter(problem.kind for problem in self.dropped))

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "annotation_file": self.annotation_file, "images": self.images, "images_kept": self.images_kept,
            "annotations": self.annotations, "annotations_kept": self.annotations_kept, "boxes_clipped": self.boxes_clipped,
            "dropped_by_kind": self.counts, "dropped": [asdict(problem) for problem in self.dropped],
        }  # fmt: skip


@dataclass
class ValidatedSplit:
    """A split's records after validation: clean images, their annotations (boxes clipped), categories."""

    images: dict[int, dict[str, Any]]  # image id -> record (with width and height), in id order
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its annotations (bbox as 4 floats)
    categories: list[dict[str, Any]]
    report: SplitReport


class ImageHeaderCache:
    """Image headers (size, mode) by file, valid while the file's size and modification time are unchanged.

    Args:
        path: a JSON file to keep them in between runs; ``None`` keeps them for this process only.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (json.JSONDecodeError, OSError):
                self.entries = {}  # a damaged cache is only a slower run

    def get(self, file: Path, stat: os.stat_result) -> dict[str, Any] | None:
        entry = self.entries.get(str(file))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry
        return None

    def put(self, file: Path, stat: os.stat_result, header: dict[str, Any]) -> None:
        self.entries[str(file)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **header}
        self.changed = True

    def save(self) -> None:
        if self.path and self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.entries))
            os.replace(temporary, self.path)  # atomic: a concurrent run reads the old or the new file
            self.changed = False


def read_image_header(file: Path | BinaryIO) -> dict[str, Any]:
    """The header of an image file (a path or an open binary file): ``width`` and ``height`` upright (as
    its EXIF orientation shows it, as training reads it), ``mode``, ``format``; raises ``ValueError``
    saying why the file cannot be used."""
    empty = file.stat().st_size == 0 if isinstance(file, Path) else len(file.getbuffer()) == 0 if hasattr(file, "getbuffer") else False
    if empty:
        raise ValueError("the file is empty (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # data.max_image_pixels is the one limit (pixel_limit_problem): Pillow's own, fixed one is lifted for the header.
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                width, height = image.size
                if _orientation(image) in (5, 6, 7, 8):  # rotated by 90 degrees: shown the other way round
                    width, height = height, width
                return {"width": int(width), "height": int(height), "mode": image.mode, "format": image.format}
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"not an image Pillow can read ({type(error).__name__}: {error})") from error
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation, from the header only (``getexif`` would decode a PNG's pixels to look past them)."""
    if image.format in ("JPEG", "MPO", "TIFF", "WEBP"):
        return image.getexif().get(0x0112)
    if "exif" in image.info:  # an eXIf chunk read with the header
        exif = Image.Exif()
        exif.load(image.info["exif"])
        return exif.get(0x0112)
    return None


def pixel_limit_problem(header: dict[str, Any], max_image_pixels: int | None, setting: str = "data.max_image_pixels") -> str | None:
    """Why an image of ``header``'s size is refused under ``max_image_pixels`` (the config ``setting``), or ``None``."""
    pixels = header["width"] * header["height"]
    if max_image_pixels and pixels > max_image_pixels:
        return (f"{header['width']}x{header['height']} = {pixels:,} pixels is above {setting}={max_image_pixels:,} "
                "(a decompression-bomb guard); raise the limit if the image is genuine")  # fmt: skip
    return None


def load_annotation_file(path: Path) -> dict[str, Any]:
    """The JSON of a COCO annotation file, with its three lists; anything else is a :class:`DatasetError`."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found. Fix: point the data config's split at a COCO json.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}. Fix: repair or re-export the file.") from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a text file ({error}). Fix: point the split at the COCO json.") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: the file holds a JSON {type(content).__name__}, not an object with images, annotations and categories.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DatasetError(f"{path}: field '{key}' is missing or not a list; a COCO detection file needs it.")
    return content


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(content: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    seen: set[int] = set()
    categories = []
    for index, category in enumerate(content["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")) or not isinstance(category.get("name"), str):
            raise DatasetError(f"{path}: categories[{index}] = {category!r} is not {{\"id\": <int>, \"name\": <str>}}. Fix: repair the category list.")
        if category["id"] in seen:
            raise DatasetError(f"{path}: category id {category['id']} appears twice in 'categories'. Fix: give every category its own id.")
        seen.add(category["id"])
        categories.append(category)
    return categories


class _Collector:
    """Raises the first problem (``raise``) or records it (``skip``)."""

    def __init__(self, report: SplitReport, on_invalid: InvalidPolicy) -> None:
        self.report = report
        self.on_invalid = on_invalid

    def __call__(self, problem: Problem) -> None:
        if self.on_invalid == "raise":
            raise DatasetError(f"{problem.text()} {_FIX_OR_SKIP}")
        self.report.dropped.append(problem)


@dataclass
class CocoRecords:
    """A split's COCO records held in memory: read from a COCO json, or converted from another layout.

    The readers of YOLO, Pascal VOC and Hugging Face datasets (:mod:`cvexp.data.formats`) convert
    to this, so that every format meets the one validator and yields the same samples.

    Attributes:
        content: the COCO dict (``images``, ``annotations``, ``categories``).
        source: what messages name as the records' file (the annotation json, a ``data.yaml``, ...).
        problems: what the conversion could not express as COCO (a malformed label line, a class
            outside the class list): each is raised or skipped by ``on_invalid`` like a COCO problem.
        images_refused, annotations_refused: how many records those problems left out of ``content``.
    """

    content: dict[str, Any]
    source: str
    problems: list[Problem] = field(default_factory=list)
    images_refused: int = 0
    annotations_refused: int = 0


def validate_coco_split(
    annotation_path: Path | CocoRecords,
    images_dir: Path,
    split: str = "",
    on_invalid: InvalidPolicy = "raise",
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    header_cache: ImageHeaderCache | None = None,
    progress: bool = True,
    require_masks: bool = False,
) -> ValidatedSplit:
    """Validates one split (see the module doc) and returns what it keeps.

    ``annotation_path`` is a COCO json, or :class:`CocoRecords` converted from another layout (whose
    conversion problems are raised or skipped first, as ``on_invalid`` says).
    ``require_masks`` (instance segmentation) also checks each annotation's ``segmentation``: polygons
    of at least 3 points of finite numbers, or an RLE of the image's size (:func:`segmentation_problem`).
    """
    if on_invalid not in ("raise", "skip"):
        raise DatasetError(f"data.on_invalid is '{on_invalid}'; use 'raise' or 'skip'.")
    records = annotation_path if isinstance(annotation_path, CocoRecords) else CocoRecords(load_annotation_file(annotation_path), str(annotation_path))
    content, file = records.content, records.source
    categories = _categories(content, Path(file))
    report = SplitReport(split, file, images=len(content["images"]) + records.images_refused,
                         annotations=len(content["annotations"]) + records.annotations_refused)  # fmt: skip
    reject = _Collector(report, on_invalid)
    for problem in records.problems:
        reject(problem)
    cache = header_cache or ImageHeaderCache()

    images, dropped_images = _valid_images(content["images"], images_dir.resolve(), file, reject, max_image_pixels, cache, progress)
    cache.save()
    annotations = _valid_annotations(content["annotations"], images, dropped_images, {c["id"] for c in categories}, file, reject, report,
                                     require_masks)  # fmt: skip
    report.images_kept = len(images)
    report.annotations_kept = sum(len(kept) for kept in annotations.values())
    if not images:
        dropped = f" (all {report.images} dropped: {report.counts})" if report.images else ""
        raise DatasetError(f"{file}: the {f'{split} split' if split else 'split'} has no images{dropped}. Fix: point data.{split or '<split>'} "
                           "at a split with images, or leave it out of the data config.")  # fmt: skip
    if report.dropped:
        warnings.warn(f"{file}: data.on_invalid=skip dropped {len(report.dropped)} records: "
                      + ", ".join(f"{count} {kind}" for kind, count in report.counts.items()), stacklevel=2)  # fmt: skip
    return ValidatedSplit(images, annotations, categories, report)


def _valid_images(records: list[Any], images_dir: Path, file: str, reject: _Collector, max_image_pixels: int | None,
                  cache: ImageHeaderCache, progress: bool) -> tuple[dict[int, dict[str, Any]], set[Any]]:  # fmt: skip
    """The images kept (by id, in id order) and the ids of those dropped."""
    from rich.progress import track

    counts = Counter(record.get("id") for record in records if isinstance(record, dict) and _is_int(record.get("id")))
    kept: dict[int, dict[str, Any]] = {}
    dropped: set[Any] = set()
    iterator = track(records, description=f"checking the images of {file}", transient=True) if progress and len(records) > 200 else records
    for index, record in enumerate(iterator):
        before = len(reject.report.dropped)
        _check_image(index, record, images_dir, file, reject, max_image_pixels, cache, counts, kept)
        if len(reject.report.dropped) > before and isinstance(record, dict):
            dropped.add(record.get("id"))
    return dict(sorted(kept.items())), dropped


def _check_image(index: int, record: Any, images_dir: Path, file: str, reject: _Collector, max_image_pixels: int | None,
                 cache: ImageHeaderCache, counts: Counter, kept: dict[int, dict[str, Any]]) -> None:  # fmt: skip
    """Adds ``record`` to ``kept``, or rejects it with the first problem found."""
    if not isinstance(record, dict):
        reject(Problem("image record not an object", file, f"images[{index}]", "images", f"{record!r} is not an object"))
        return
    image_id, name = record.get("id"), record.get("file_name")
    where = f"image {image_id!r} ('{name}')"
    if not _is_int(image_id):
        reject(Problem("image id not an integer", file, where, "id", f"{image_id!r} is not an integer"))
        return
    if counts[image_id] > 1:
        # Which record is meant cannot be told (annotations name images by id): all are dropped.
        reject(Problem("duplicate image id", file, where, "id", f"{counts[image_id]} images share the id {image_id}"))
        return
    if not isinstance(name, str) or not name:
        reject(Problem("image file_name missing", file, where, "file_name", f"{name!r} is not a file name"))
        return
    path = (images_dir / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(images_dir):
        reject(Problem("image file outside the images folder", file, where, "file_name",
                       f"'{name}' points outside the images folder {images_dir}; names are relative to it"))  # fmt: skip
        return
    if not path.is_file():
        reject(Problem("image file missing", file, where, "file_name", f"'{name}' is not in {images_dir}"))
        return
    stat = path.stat()
    header = cache.get(path, stat)
    if header is None:
        try:
            header = read_image_header(path)
        except ValueError as error:
            reject(Problem("image file unreadable", str(path), where, "file", str(error)))
            return
        cache.put(path, stat, header)
    too_large = pixel_limit_problem(header, max_image_pixels)
    if too_large:
        reject(Problem("image above the pixel limit", str(path), where, "file", too_large))
        return
    width, height = record.get("width", header["width"]), record.get("height", header["height"])
    if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
        reject(Problem("image size not positive integers", file, where, "width/height", f"{width!r} x {height!r}"))
        return
    if (width, height) != (header["width"], header["height"]):
        reject(Problem("image size differs from the file", file, where, "width/height",
                       f"the record says {width}x{height}, the file is {header['width']}x{header['height']}; boxes are "
                       "checked against the record, so one of the two is wrong"))  # fmt: skip
        return
    kept[image_id] = {**record, "width": width, "height": height}


def _valid_annotations(records: list[Any], images: dict[int, dict[str, Any]], dropped_images: set[Any], category_ids: set[int], file: str,
                       reject: _Collector, report: SplitReport, require_masks: bool = False) -> dict[int, list[dict[str, Any]]]:  # fmt: skip
    kept: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
    seen: set[int] = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            reject(Problem("annotation record not an object", file, f"annotations[{index}]", "annotations", f"{record!r} is not an object"))
            continue
        annotation_id, image_id = record.get("id"), record.get("image_id")
        where = f"annotation {annotation_id!r} (image {image_id!r})"
        if not _is_int(annotation_id):
            reject(Problem("annotation id not an integer", file, where, "id", f"{annotation_id!r} is not an integer"))
            continue
        if annotation_id in seen:
            reject(Problem("duplicate annotation id", file, where, "id", f"another annotation has the id {annotation_id}; this one is dropped"))
            continue
        seen.add(annotation_id)
        if image_id not in images:
            if image_id in dropped_images:
                reject(Problem("annotation of a dropped image", file, where, "image_id", f"image {image_id} was dropped (see its own entry)"))
            else:
                reject(Problem("annotation of no image", file, where, "image_id", f"no image of the file has the id {image_id!r}"))
            continue
        info = images[image_id]
        where = f"annotation {annotation_id} (image {image_id}, '{info['file_name']}')"
        if record.get("category_id") not in category_ids or not _is_int(record.get("category_id")):
            reject(Problem("unknown category", file, where, "category_id",
                           f"{record.get('category_id')!r} is not among the file's categories {sorted(category_ids)}"))  # fmt: skip
            continue
        if record.get("iscrowd", 0) not in (0, 1) or isinstance(record.get("iscrowd", 0), bool):
            reject(Problem("iscrowd not 0 or 1", file, where, "iscrowd", f"{record.get('iscrowd')!r} is not 0 or 1"))
            continue
        if require_masks:
            problem = segmentation_problem(record.get("segmentation"), info["width"], info["height"])
            if problem:
                reject(Problem(problem[0], file, where, "segmentation", problem[1]))
                continue
        box, problem = _clipped_box(record.get("bbox"), info["width"], info["height"])
        if problem:
            reject(Problem(problem[0], file, where, "bbox", problem[1]))
            continue
        if box != record["bbox"]:
            report.boxes_clipped += 1
        area = record.get("area")
        if area is not None and not (isinstance(area, int | float) and not isinstance(area, bool) and math.isfinite(area) and area >= 0):
            reject(Problem("area not a number", file, where, "area", f"{area!r} is not a non-negative number"))
            continue
        kept[image_id].append({**record, "bbox": box, "area": float(area) if area is not None and box == record["bbox"] else box[2] * box[3]})
    return kept


def segmentation_problem(segmentation: Any, width: int, height: int) -> tuple[str, str] | None:
    """What makes an annotation's ``segmentation`` unusable as an instance mask (kind, message), or ``None``.

    COCO allows polygons (a list of ``[x1, y1, x2, y2, ...]``, each of at least 3 points) and RLE
    (``{"size": [h, w], "counts": ...}``, compressed or not, as crowd regions use).
    """
    if isinstance(segmentation, dict):
        if list(segmentation.get("size") or []) != [height, width] or "counts" not in segmentation:
            return ("segmentation RLE malformed", f"an RLE needs 'counts' and 'size' [{height}, {width}] (the image's); "
                    f"it has size {segmentation.get('size')!r}")  # fmt: skip
        return None
    if not isinstance(segmentation, list) or not segmentation:
        return ("segmentation missing", f"{segmentation!r} is neither polygons [[x1, y1, ...], ...] nor an RLE; instance "
                "segmentation needs a mask for every annotation")  # fmt: skip
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in polygon):
            return ("segmentation polygon malformed", f"{str(polygon)[:80]} is not a list of numbers [x1, y1, x2, y2, ...]")
        if not all(math.isfinite(v) for v in polygon):
            return ("segmentation polygon not finite", f"a polygon holds NaN or infinity: {str(polygon)[:80]}")
        if len(polygon) < 6 or len(polygon) % 2:
            return ("segmentation polygon under 3 points", f"a polygon has {len(polygon)} values; it needs x, y pairs of at least 3 points")
    return None


def _clipped_box(bbox: Any, width: int, height: int) -> tuple[list[float], tuple[str, str] | None]:
    """The box clipped to the image, or the problem (kind, message) that makes it unusable."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return [], ("bbox malformed", f"{bbox!r} is not [x, y, width, height]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return [], ("bbox not numeric", f"{bbox!r} holds values that are not numbers")
    if not all(math.isfinite(v) for v in bbox):
        return [], ("bbox not finite", f"{bbox!r} holds NaN or infinity")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return [], ("bbox negative size", f"{bbox!r} has a negative width or height")
    if w == 0 or h == 0:
        return [], ("bbox without area", f"{bbox!r} has no area (width or height 0)")
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return list(bbox), None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return [], ("bbox outside the image", f"{bbox!r} lies entirely outside the {width}x{height} image")
    return [x1, y1, x2 - x1, y2 - y1], None


def check_same_categories(splits: dict[str, Any]) -> None:
    """Every split must list the training split's categories (ids and names); otherwise a :class:`DatasetError`.

    ``splits``: by name, anything with ``categories`` and ``report`` (a :class:`ValidatedSplit`, a dataset).
    """
    if "train" not in splits:
        return
    reference = {(c["id"], c["name"]) for c in splits["train"].categories}
    for name, split in splits.items():
        other = {(c["id"], c["name"]) for c in split.categories}
        if other != reference:
            raise DatasetError(f"{split.report.annotation_file}: the {name} split's categories differ from the train split's "
                               f"({splits['train'].report.annotation_file}): only in {name}: {sorted(other - reference)}, only in train: "
                               f"{sorted(reference - other)}. Fix: export every split with the same category list.")  # fmt: skip


def validation_table(reports: dict[str, SplitReport]) -> Any:
    """A Rich table: per split, images and annotations kept and dropped, boxes clipped, and why records were dropped."""
    from rich.table import Table

    table = Table(title="data: what validation kept", title_justify="left")
    for column in ("split", "images kept", "dropped", "annotations kept", "dropped", "boxes clipped", "dropped because"):
        table.add_column(column, justify="left" if column in ("split", "dropped because") else "right")
    for name, report in reports.items():
        reasons = ", ".join(f"{count} {kind}" for kind, count in sorted(report.counts.items())) or "-"
        table.add_row(name, str(report.images_kept), str(report.images - report.images_kept), str(report.annotations_kept),
                      str(report.annotations - report.annotations_kept), str(report.boxes_clipped), reasons)  # fmt: skip
    return table


def write_validation_report(reports: dict[str, SplitReport], path: Path, unreadable: dict[str, str] | None = None) -> Path:
    """Writes what validation kept and dropped (every dropped record, by split) and the images skipped at read time as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"splits": {name: report.to_dict() for name, report in reports.items()},
               "unreadable_at_training_time": [{"path": p, "reason": why} for p, why in sorted((unreadable or {}).items())]}  # fmt: skip
    path.write_text(json.dumps(content, indent=2))
    return path
