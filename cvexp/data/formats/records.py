"""Building COCO records from another layout: what the YOLO, Pascal VOC and Hugging Face readers share.

A reader walks its layout and calls :class:`RecordsBuilder`: ``image`` for each image (its header
checked, through the same cache and pixel limit as COCO images), ``box`` for each object, and
``refuse`` for what it cannot express as COCO (a malformed label line, a class outside the class
list). The result, :class:`~cvexp.data.validation.CocoRecords`, then meets the COCO validator, so
that every layout is checked, skipped and reported the same way (:mod:`cvexp.data.validation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycocotools import mask as coco_mask

from cvexp.data.readers import check_image_file
from cvexp.data.validation import CocoRecords, ImageHeaderCache, Problem


class RecordsBuilder:
    """Collects one split's images, annotations and refused records as they are read.

    Args:
        source: what messages name as the split's file (a ``data.yaml``, an ``ImageSets`` list, a dataset folder).
        images_dir: the folder the images' ``file_name`` are relative to.
        categories: the split's classes as COCO categories (``id``, ``name``).
        max_image_pixels, header_cache: as for COCO data (:func:`cvexp.data.validation.validate_coco_split`).
    """

    def __init__(self, source: str, images_dir: Path, categories: list[dict[str, Any]], max_image_pixels: int | None,
                 header_cache: ImageHeaderCache) -> None:  # fmt: skip
        self.source = source
        self.images_dir = images_dir
        self.categories = categories
        self.max_image_pixels = max_image_pixels
        self.header_cache = header_cache
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.problems: list[Problem] = []
        self.images_refused = 0
        self.annotations_refused = 0

    def refuse(self, problem: Problem, images: int = 0, annotations: int = 0) -> None:
        """Leaves ``images`` images and ``annotations`` annotations out, for the reason ``problem`` gives."""
        self.problems.append(problem)
        self.images_refused += images
        self.annotations_refused += annotations

    def refuse_image(self, problem: Problem, objects: int = 0) -> None:
        """Leaves an image out for ``problem``, with its ``objects`` (label lines, XML objects): annotations of a dropped image, as COCO counts them."""
        self.refuse(problem, images=1)
        for _ in range(objects):
            self.refuse(Problem("annotation of a dropped image", problem.file, problem.record, "image", "the image was dropped (see its own entry)"),
                        annotations=1)  # fmt: skip

    def image(self, image_id: int, path: Path, where: str, objects: int = 0, size: tuple[float, float] | None = None,
              source: str | None = None) -> dict[str, Any] | None:  # fmt: skip
        """Adds the image at ``path`` (its header checked) and returns its record; ``None`` if refused.

        ``size``: the width and height the labels state (VOC's XML), checked against the file's
        (``source`` names the file that states it). A refused image takes its ``objects`` (label
        lines, XML objects) with it, counted as annotations of a dropped image.
        """
        file_name = path.relative_to(self.images_dir).as_posix() if path.is_relative_to(self.images_dir) else str(path)
        problems: list[Problem] = []
        header = check_image_file(path, where, problems.append, self.max_image_pixels, self.header_cache) if path.is_file() else None
        if not path.is_file():
            problems.append(Problem("image file missing", self.source, where, "file", f"'{path}' does not exist"))
        elif header is not None and size is not None and tuple(size) != (header["width"], header["height"]):
            problems.append(Problem("image size differs from the file", source or self.source, where, "size",
                                    f"the labels say {size[0]:g}x{size[1]:g}, the file is {header['width']}x{header['height']}; "
                                    "boxes are checked against the labels' size, so one of the two is wrong"))  # fmt: skip
        if problems:
            self.refuse_image(problems[0], objects)
            return None
        record = {"id": image_id, "file_name": file_name, "width": header["width"], "height": header["height"]}
        self.images.append(record)
        return record

    def box(self, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0, segmentation: list[list[float]] | None = None) -> None:
        """Adds an annotation: ``bbox`` in COCO terms (absolute ``[x, y, width, height]``)."""
        annotation = {"id": len(self.annotations) + self.annotations_refused, "image_id": image_id, "category_id": category_id,
                      "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}  # fmt: skip
        if segmentation is not None:
            annotation["segmentation"] = segmentation
            record = next(image for image in reversed(self.images) if image["id"] == image_id)
            # COCO's area of a polygon is that of its rasterised mask (pycocotools), as COCO exports write it.
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, record["height"], record["width"]))
            annotation["area"] = float(coco_mask.area(rle))
        self.annotations.append(annotation)

    def records(self) -> CocoRecords:
        """What was read, as COCO records for the validator."""
        content = {"images": self.images, "annotations": self.annotations, "categories": self.categories}
        return CocoRecords(content, self.source, self.problems, self.images_refused, self.annotations_refused)
