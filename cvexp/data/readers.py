"""What the readers of image folders share (classification CSV and ImageFolder, segmentation mask PNGs).

Listing image files, checking each image's header (through the COCO validator's header cache and
pixel limit, :mod:`cvexp.data.validation`), reading CSV rows, confining file names to their folder
and the accounting of a split: one place for what every non-COCO reader checks the same way.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cvexp.data import validation
from cvexp.data.validation import ImageHeaderCache, Problem, SplitReport, _Collector, pixel_limit_problem
from cvexp.errors import DatasetError

#: The file extensions read as images (torchvision's ``IMG_EXTENSIONS``), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Roboflow's name for the class list of a classification or semantic-segmentation export.
CLASSES_FILE = "_classes.csv"
# More records than this get a progress bar while their headers are read (as the COCO validator does).
_PROGRESS_ABOVE = 200

T = TypeVar("T")


def check_policy(on_invalid: str) -> None:
    """Refuses an ``on_invalid`` other than ``raise`` or ``skip`` (a typo must not silently mean either)."""
    if on_invalid not in ("raise", "skip"):
        raise DatasetError(f"data.on_invalid is '{on_invalid}'; use 'raise' or 'skip'.")


def split_label(name: str) -> tuple[str, str]:
    """How messages name the split (``the train split``) and its config entry (``data.train``)."""
    return (f"the {name} split" if name else "the split"), f"data.{name or '<split>'}"


def require_folder(path: Path, name: str, what: str, key: str) -> Path:
    """``path`` if it is a folder; otherwise a :class:`DatasetError` saying which setting (``data.<split>.<key>``) to fix."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found (not a folder). Fix: point {split_label(name)[1]}.{key} at the split's {what}.")
    return path


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (:data:`IMAGE_EXTENSIONS`, case-insensitively)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (by extension) in sorted order of their path relative to it, and the files ignored.

    Ignored: files without an image extension and anything hidden (a name starting with ``.``, such
    as ``.DS_Store`` or ``.ipynb_checkpoints/``), which no export means as data. The caller warns
    about them, so that nothing is left out silently.
    """
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images, ignored = [], []
    for path in candidates:
        if not path.is_file():
            continue
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not is_image_name(path.name):
            ignored.append(relative)
        else:
            images.append(relative)
    return sorted(images, key=lambda p: p.as_posix()), sorted(ignored, key=lambda p: p.as_posix())


def warn_ignored(folder: Path, ignored: list[Path], why: str) -> None:
    """Warns about files a reader does not read (``why`` says which), naming the first few."""
    if ignored:
        names = ", ".join(f"'{p.as_posix()}'" for p in ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        warnings.warn(f"{folder}: {len(ignored)} files ignored ({why}): {names}.", stacklevel=3)


def progress(items: list[T], description: str) -> Iterable[T]:
    """``items``, with a transient progress bar when there are many (header and mask reads take a while)."""
    if len(items) <= _PROGRESS_ABOVE:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


def confined_path(folder: Path, name: str) -> Path | None:
    """``folder / name`` resolved, or ``None`` when the name is absolute or leads outside ``folder`` (``../``)."""
    root = folder.resolve()
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root):
        return None
    return path


def check_image_file(path: Path, where: str, reject: _Collector, max_image_pixels: int | None, cache: ImageHeaderCache,
                     what: str = "image") -> dict[str, Any] | None:  # fmt: skip
    """The header of an existing image file (upright size, mode), or ``None`` after rejecting the record.

    The checks of the COCO validator: the header opens (:func:`cvexp.data.validation.read_image_header`,
    through ``cache``), and the pixel count is under ``max_image_pixels``. ``what`` names the file's
    role in the problem kinds (``image file unreadable``, ``mask above the pixel limit``) and their
    field (``file`` for an image, as the COCO reader names it; ``mask`` for a mask).
    """
    field = "file" if what == "image" else what
    stat = path.stat()
    header = cache.get(path, stat)
    if header is None:
        try:
            # Through the module, so that a test can count the header reads.
            header = validation.read_image_header(path)
        except ValueError as error:
            reject(Problem(f"{what} file unreadable", str(path), where, field, str(error)))
            return None
        cache.put(path, stat, header)
    too_large = pixel_limit_problem(header, max_image_pixels)
    if too_large:
        reject(Problem(f"{what} above the pixel limit", str(path), where, field, too_large))
        return None
    return header


def read_csv_rows(path: Path, what: str, fix: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of a CSV file as ``(line number, cells)``, every cell stripped of surrounding spaces; blank lines are left out.

    Roboflow writes ``", "`` between cells; ``skipinitialspace`` lets a quoted cell follow the
    space. A byte-order mark (Excel) is dropped. A missing or non-text file is a
    :class:`DatasetError` (``what`` names the file's role, ``fix`` says where it should come from).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found. Fix: {fix}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream, skipinitialspace=True)
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    yield reader.line_num, [cell.strip() for cell in cells]
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: {what} is not UTF-8 text ({error}). Fix: {fix}") from error
    except csv.Error as error:
        raise DatasetError(f"{path}: {what} is not valid CSV ({error}). Fix: {fix}") from error


def finish_split(report: SplitReport, kept: int, source: Path, name: str) -> None:
    """Records how many images were kept; raises when none is left, warns about what ``skip`` dropped."""
    report.images_kept = kept
    if not kept:
        dropped = f" (all {report.images} dropped: {report.counts})" if report.images else ""
        split, setting = split_label(name)
        raise DatasetError(f"{source}: {split} has no images{dropped}. Fix: point {setting} at a split with images, or leave it out of the data config.")
    if report.dropped:
        warnings.warn(f"{source}: data.on_invalid=skip dropped {len(report.dropped)} records: "
                      + ", ".join(f"{count} {kind}" for kind, count in report.counts.items()), stacklevel=3)  # fmt: skip


# --- The datasets ---
