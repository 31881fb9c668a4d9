"""The Pascal VOC layout: ``Annotations/*.xml``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.

Each line of ``ImageSets/Main/<image_set>.txt`` names an image (its first word: VOC's per-class
lists add a ``1``/``-1`` column); ``Annotations/<name>.xml`` gives its ``filename`` (default
``<name>.jpg``), its ``size`` and its ``object`` elements (``name``, ``difficult``, ``bndbox``).

Read as COCO:

- boxes: VOC's corners are 1-based and inclusive, so a box ``xmin..xmax`` covers
  ``xmax - xmin + 1`` pixels starting at pixel ``xmin - 1``: ``x = xmin - 1``,
  ``width = xmax - xmin + 1`` (the same for ``y``), as detectron2 reads VOC;
- ``difficult`` objects become crowd annotations (``iscrowd=1``): left out of the training targets,
  and matched by COCO evaluation without counting as found or missed, as VOC's own evaluation
  ignores them;
- classes: ``data.dataset.classes`` in order (category id = position), by default VOC's 20; an
  object of another class is a problem;
- image ids: the position in the image-set list.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from cvexp.data.coco import CocoDetectionDataset
from cvexp.data.formats.records import RecordsBuilder
from cvexp.data.validation import DEFAULT_MAX_IMAGE_PIXELS, CocoRecords, ImageHeaderCache, Problem
from cvexp.errors import DatasetError

#: The 20 classes of Pascal VOC 2007/2012, in their usual order.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog", "horse",
               "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")  # fmt: skip


def read_voc_split(dataset_dir: Path, image_set: str, classes: list[str] | tuple[str, ...] = VOC_CLASSES,
                   max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, header_cache: ImageHeaderCache | None = None) -> CocoRecords:  # fmt: skip
    """One image set of a VOC dataset as COCO records (``file_name`` relative to ``dataset_dir``)."""
    list_file = dataset_dir / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: image set not found. Fix: point data.root at the VOC folder (with Annotations/, JPEGImages/, "
                           "ImageSets/Main/) and data.<split>.image_set at one of its lists.")  # fmt: skip
    if len(set(classes)) != len(classes) or not classes:
        raise DatasetError(f"data.dataset.classes is {list(classes)!r}; VOC data needs its class names, each once. Fix: list them.")
    names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    categories = [{"id": index, "name": name} for index, name in enumerate(classes)]
    builder = RecordsBuilder(str(list_file), dataset_dir.resolve(), categories, max_image_pixels, header_cache or ImageHeaderCache())
    category_of = {name: index for index, name in enumerate(classes)}
    for image_id, name in enumerate(names):
        _read_image(builder, dataset_dir.resolve(), image_id, name, category_of)
    return builder.records()


def _read_image(builder: RecordsBuilder, root: Path, image_id: int, name: str, category_of: dict[str, int]) -> None:
    xml_file = root / "Annotations" / f"{name}.xml"
    where = f"image {image_id} ('{name}')"
    if not xml_file.is_file():
        builder.refuse_image(Problem("annotation XML missing", str(xml_file), where, "file", f"the image set lists '{name}', which has no XML"))
        return
    try:
        tree = ElementTree.parse(xml_file).getroot()
    except ElementTree.ParseError as error:
        builder.refuse_image(Problem("annotation XML malformed", str(xml_file), where, "file", f"not valid XML ({error})"))
        return
    objects = tree.findall("object")
    size = _numbers(tree.find("size"), ("width", "height"))
    if size is None:
        builder.refuse_image(Problem("XML without size", str(xml_file), where, "size", "no <size> with <width> and <height>; the boxes "
                                     "cannot be checked against the image without it"), len(objects))  # fmt: skip
        return
    image = root / "JPEGImages" / (tree.findtext("filename") or f"{name}.jpg").strip()
    record = builder.image(image_id, image, where, len(objects), size=size, source=str(xml_file))
    if record is None:
        return
    for number, element in enumerate(objects):
        _read_object(builder, record, xml_file, number, element, category_of)


def _read_object(builder: RecordsBuilder, record: dict[str, Any], xml_file: Path, number: int, element: ElementTree.Element,
                 category_of: dict[str, int]) -> None:  # fmt: skip
    where = f"object {number} (image {record['id']}, '{record['file_name']}')"
    name = (element.findtext("name") or "").strip()
    if name not in category_of:
        builder.refuse(Problem("class not in data.dataset.classes", str(xml_file), where, "name",
                               f"'{name}' is not among the classes {sorted(category_of)}; add it to data.dataset.classes"), annotations=1)  # fmt: skip
        return
    corners = _numbers(element.find("bndbox"), ("xmin", "ymin", "xmax", "ymax"))
    if corners is None:
        builder.refuse(Problem("bndbox malformed", str(xml_file), where, "bndbox", "no <bndbox> with numeric xmin, ymin, xmax, ymax"),
                       annotations=1)  # fmt: skip
        return
    xmin, ymin, xmax, ymax = corners
    difficult = (element.findtext("difficult") or "0").strip()
    builder.box(record["id"], category_of[name], [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], iscrowd=int(difficult == "1"))


def _numbers(element: ElementTree.Element | None, keys: tuple[str, ...]) -> tuple[float, ...] | None:
    """The numbers of ``element``'s children ``keys``, or ``None`` when one is missing or not a finite number."""
    if element is None:
        return None
    try:
        values = tuple(float((element.findtext(key) or "").strip()) for key in keys)
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


class VocDetectionDataset(CocoDetectionDataset):
    """An image set of a Pascal VOC dataset (see the module doc), validated and read as COCO records.

    Args:
        dataset_dir: the VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).
        image_set: the list to read, ``ImageSets/Main/<image_set>.txt`` (``train``, ``val``, ``trainval``, ``test``).
        classes: the class names, in category-id order (default: VOC's 20).
        options: as for :class:`~cvexp.data.coco.CocoDetectionDataset` (transform, on_invalid, ...).
    """

    def __init__(self, dataset_dir: str, image_set: str, classes: list[str] | tuple[str, ...] = VOC_CLASSES, **options: Any) -> None:
        options["header_cache"] = options.get("header_cache") or ImageHeaderCache()
        records = read_voc_split(Path(dataset_dir), image_set, list(classes), options.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                                 options["header_cache"])  # fmt: skip
        super().__init__(str(Path(dataset_dir).resolve()), records=records, **options)
