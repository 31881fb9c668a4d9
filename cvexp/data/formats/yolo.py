"""The Ultralytics YOLO layout: a ``data.yaml``, ``images/`` and ``labels/*.txt`` of normalised boxes.

``data.yaml`` names the classes (``names``: a list, or a mapping from class index to name) and
each split (``train``, ``val``, ``test``): a folder of images, a ``.txt`` file listing image
paths, or a list of either, relative to ``path`` (itself relative to ``data.yaml``'s folder;
default: that folder). Each image ``.../images/.../NAME.ext`` has its labels in
``.../labels/.../NAME.txt``, one object per line: ``class cx cy w h`` normalised to [0, 1], or
``class x1 y1 x2 y2 ...`` (a polygon, Ultralytics' segmentation labels: its box is its bounds).
An empty or missing label file is an image without objects.

Read as COCO: class index ``i`` is category id ``i``; an image's id is its position in the split
(the order of a list file, or sorted paths in a folder), so ids are stable while the split is.
:func:`write_yolo` writes COCO records in this layout (``python -m cvexp.convert``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from cvexp.data.coco import CocoDetectionDataset
from cvexp.data.formats.coco import link_or_copy
from cvexp.data.formats.records import RecordsBuilder
from cvexp.data.labels import LabelMap
from cvexp.data.readers import is_image_name
from cvexp.data.validation import DEFAULT_MAX_IMAGE_PIXELS, CocoRecords, ImageHeaderCache, Problem
from cvexp.errors import DatasetError

#: Label values are written with 10 significant digits (Ultralytics writes 6, ``%g``): a box read back is
#: the COCO box to about 1e-7 px, so that training on the converted copy repeats training on the original.
LABEL_FORMAT = "{:.10g}"
#: How far a corner may pass the image border (as a fraction of its side) and still be read as on it:
#: the rounding of a 6-digit label file, whose border boxes overhang by up to about 1e-6.
ROUNDING = 1e-5


def load_data_yaml(data_file: Path) -> dict[str, Any]:
    """``data.yaml`` as a dict, with ``names`` checked; anything else is a :class:`DatasetError` naming the field and the fix."""
    if not data_file.is_file():
        raise DatasetError(f"{data_file}: YOLO data.yaml not found. Fix: point data.root at the folder of data.yaml (or data.<split>.data_file at it).")
    try:
        content = yaml.safe_load(data_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DatasetError(f"{data_file}: not valid YAML ({error}). Fix: repair the file.") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{data_file}: holds a YAML {type(content).__name__}, not a mapping with 'names' and the split paths.")
    return content


def class_names(content: dict[str, Any], data_file: Path) -> list[str]:
    """The class names by index: ``names`` as a list, or a mapping ``{0: name, 1: name, ...}`` of contiguous indices."""
    names = content.get("names")
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(name, str | int) for name in names):
        raise DatasetError(f"{data_file}: field 'names' is {names!r}; YOLO data needs the class names as a list, or a mapping "
                           "{0: name, 1: name, ...} of contiguous indices. Fix: add them.")  # fmt: skip
    return [str(name) for name in names]


def dataset_path(content: dict[str, Any], data_file: Path) -> Path:
    """The folder split paths are relative to: ``path`` (absolute, or relative to data.yaml's folder), by default that folder."""
    base = Path(content.get("path") or ".")
    return (base if base.is_absolute() else data_file.parent / base).resolve()


def split_images(content: dict[str, Any], split: str, data_file: Path) -> list[Path]:
    """The split's image files in reading order: a list file's order, or the sorted paths under a folder."""
    entries = content.get(split)
    if not entries:
        raise DatasetError(f"{data_file}: no '{split}' entry; the YOLO data lists its splits as '{split}: images/{split}' (a folder or "
                           f"a .txt list of images). Fix: add it, or set data.{split}=null if the data has no such split.")  # fmt: skip
    base = dataset_path(content, data_file)
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = base / str(entry)
        if not path.exists() and str(entry).startswith("../"):
            # Roboflow writes 'train: ../train/images' next to the dataset's folders; Ultralytics reads it from there too.
            path = base / str(entry)[3:]
        if path.is_dir():
            images += sorted((p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)), key=lambda p: p.as_posix())
        elif path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            images += [path.parent / line for line in lines]  # relative to the list file; an absolute line stays as it is
        else:
            raise DatasetError(f"{data_file}: '{split}: {entry}' is neither a folder nor a list file ({path} does not exist). Fix: "
                               f"point '{split}' at the split's images.")  # fmt: skip
    return [Path(os.path.normpath(p)) for p in images]


def label_path(image: Path) -> Path:
    """Where an image's labels are: its path with the last ``images`` folder replaced by ``labels``, and ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    index = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")


def read_yolo_split(data_file: Path, split: str, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                    header_cache: ImageHeaderCache | None = None) -> tuple[CocoRecords, Path]:  # fmt: skip
    """One split of a YOLO dataset as COCO records, and the folder their ``file_name`` are relative to."""
    content = load_data_yaml(data_file)
    names = class_names(content, data_file)
    base = dataset_path(content, data_file)
    categories = [{"id": index, "name": name} for index, name in enumerate(names)]
    builder = RecordsBuilder(str(data_file), base, categories, max_image_pixels, header_cache or ImageHeaderCache())
    for image_id, image in enumerate(split_images(content, split, data_file)):
        labels = label_path(image)
        lines = _label_lines(labels)
        record = builder.image(image_id, image, f"image {image_id} ('{image.name}')", objects=len(lines))
        if record is not None:
            for number, line in lines:
                _read_line(builder, record, labels, number, line, len(names))
    return builder.records(), base


def _label_lines(labels: Path) -> list[tuple[int, str]]:
    if not labels.is_file():
        return []
    return [(number, line) for number, line in enumerate(labels.read_text().splitlines(), 1) if line.strip()]


def _read_line(builder: RecordsBuilder, record: dict[str, Any], labels: Path, number: int, line: str, num_classes: int) -> None:
    """Adds the object of one label line, or refuses the line with the problem that makes it unusable."""
    where = f"line {number} (image {record['id']}, '{record['file_name']}')"
    fields = line.split()

    def refuse(kind: str, field: str, message: str) -> None:
        builder.refuse(Problem(kind, str(labels), where, field, message), annotations=1)

    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        refuse("label line malformed", "fields", f"{len(fields)} values in '{line.strip()}'; a box is 'class cx cy w h' (5 values), "
               "a polygon 'class x1 y1 x2 y2 x3 y3 ...' (an odd number, at least 7)")  # fmt: skip
        return
    try:
        class_index, values = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        refuse("label values not numbers", "fields", f"'{line.strip()}' holds values that are not numbers")
        return
    if not class_index.is_integer() or not 0 <= class_index < num_classes:
        refuse("class index outside names", "class", f"{fields[0]} is not a class index of data.yaml's names (0 to {num_classes - 1})")
        return
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        refuse("label coordinates outside [0, 1]", "coordinates", f"'{line.strip()}': YOLO coordinates are fractions of the image's "
               "width and height, each in [0, 1]")  # fmt: skip
        return
    width, height = record["width"], record["height"]
    if len(values) == 4:
        cx, cy, w, h = values
        # A box touching the border, written with 6 digits, can overhang it by a rounding error: not an overhang to clip and count.
        x1, y1 = _snap((cx - w / 2), 0.0), _snap((cy - h / 2), 0.0)
        x2, y2 = _snap((cx + w / 2), 1.0), _snap((cy + h / 2), 1.0)
        builder.box(record["id"], int(class_index), [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height])
        return
    xs, ys = [x * width for x in values[0::2]], [y * height for y in values[1::2]]
    polygon = [coordinate for point in zip(xs, ys, strict=True) for coordinate in point]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    builder.box(record["id"], int(class_index), box, segmentation=[polygon])


def _snap(value: float, border: float) -> float:
    """``border`` where ``value`` passes it by no more than the rounding of a 6-digit label file, else ``value``."""
    return border if abs(value - border) <= ROUNDING and (value - border) * (border - 0.5) > 0 else value


def write_yolo(splits: dict[str, tuple[dict[str, Any], Path]], out_dir: Path) -> Path:
    """Writes COCO splits (``name -> (content, images folder)``) in the YOLO layout under ``out_dir``; returns its data.yaml.

    The classes are those cvexp trains (:meth:`LabelMap.from_records` of the first split: a
    Roboflow supercategory without boxes of its own is left out), class ``i`` the ``i``-th by
    category id. Each split gets ``images/<split>/``, ``labels/<split>/`` and a list file
    ``<split>.txt`` in image-id order, so that reading it back keeps the order (and the samples) of
    the COCO split. Images are hard-linked where the file system allows, copied otherwise. Crowd
    annotations, which YOLO cannot express, are left out.
    """
    first = next(iter(splits.values()))[0]
    used = {a["category_id"] for a in first["annotations"]}
    classes = LabelMap.from_records(first["categories"], used).categories
    index_of = {category.id: index for index, category in enumerate(classes)}
    data = {"path": ".", "names": [category.name for category in classes]}
    for name, (content, images_dir) in splits.items():
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in content["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        listed = []
        for image in sorted(content["images"], key=lambda record: record["id"]):
            target = out_dir / "images" / name / image["file_name"]
            link_or_copy(images_dir / image["file_name"], target)
            lines = [_box_line(a, index_of, image["width"], image["height"]) for a in by_image.get(image["id"], []) if not a.get("iscrowd")]
            labels = label_path(target)
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("".join(f"{line}\n" for line in lines))
            listed.append(f"./{target.relative_to(out_dir).as_posix()}")
        (out_dir / f"{name}.txt").write_text("".join(f"{line}\n" for line in listed))
        data[name] = f"{name}.txt"
    data_file = out_dir / "data.yaml"
    data_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_file


def _box_line(annotation: dict[str, Any], index_of: dict[int, int], width: int, height: int) -> str:
    x, y, w, h = annotation["bbox"]
    values = (index_of[annotation["category_id"]], (x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    return " ".join(LABEL_FORMAT.format(v) for v in values)


class YoloDetectionDataset(CocoDetectionDataset):
    """A split of a YOLO dataset (see the module doc), validated and read as COCO records.

    Args:
        data_file: the dataset's ``data.yaml``.
        split: its entry to read (``train``, ``val``, ``test``).
        options: as for :class:`~cvexp.data.coco.CocoDetectionDataset` (transform, on_invalid, ...).
    """

    def __init__(self, data_file: str, split: str, **options: Any) -> None:
        options["header_cache"] = options.get("header_cache") or ImageHeaderCache()
        records, images_dir = read_yolo_split(Path(data_file), split, options.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                                              options["header_cache"])  # fmt: skip
        super().__init__(str(images_dir), records=records, **options)
