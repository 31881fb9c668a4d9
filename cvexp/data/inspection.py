"""A report on a detection dataset before training: what each split holds, what it implies, what is wrong with it.

:func:`inspect_dataset` reads what validation kept of every split (the COCO records of
``coco_content()``) and counts, per split: images and objects, per class, objects per image, box
sizes in the original pixels and at the model's input size, aspect ratios, image sizes, files with
the same content (within and across splits) and the problems validation raised or skipped. From
those it suggests the settings the data implies (:class:`Suggestion`) and warns about what would
hurt a training (:attr:`DatasetInspection.warnings`).

:func:`summary_table` is the short form that ``cvexp.train`` prints at the start of a run;
:func:`inspection_tables` the full one of ``python -m cvexp.inspect`` (:mod:`cvexp.data.inspection_report`).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.data.validation import SplitReport
from cvexp.errors import ConfigError, DatasetError

# COCO's object size classes, by box area in the original pixels: small < 32², medium < 96², large the rest.
SMALL_SIDE, LARGE_SIDE = 32, 96
# The stride of the finest feature map most detectors predict from: a box whose shorter side is
# under one cell of it at the input size has no feature of its own.
FEATURE_STRIDE = 8
# The share of boxes allowed below one feature cell: the 5th percentile of the shorter side must reach the stride.
SMALL_BOX_PERCENTILE = 5
# Image sizes the suggestion rounds up to: the total stride of the usual backbones.
SIZE_MULTIPLE = 32
# num_queries: the most objects in one image plus this share, rounded up to a multiple of QUERIES_MULTIPLE.
QUERIES_MARGIN = 0.2
QUERIES_MULTIPLE = 10
# Fewer training annotations of a class than this: too few to learn it reliably.
FEW_ANNOTATIONS = 10
# Problems of a split listed in the printed tables (the JSON has all of them).
PROBLEMS_SHOWN = 5
PERCENTILES = (5, 25, 50, 75, 95)


def distribution(values: np.ndarray) -> dict[str, float] | None:
    """min, the :data:`PERCENTILES` (numpy's linear interpolation), max and mean of ``values``; ``None`` when empty."""
    if values.size == 0:
        return None
    stats = {"min": float(values.min())}
    stats |= {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)}
    return stats | {"max": float(values.max()), "mean": float(values.mean())}


@dataclass
class ClassCount:
    """One class in one split: its annotations and the images that hold at least one of them."""

    id: int
    name: str
    annotations: int = 0
    images: int = 0


@dataclass
class ImageRef:
    """An image of a split, as duplicates name it."""

    split: str
    image_id: int
    file_name: str


@dataclass
class SplitArrays:
    """The per-box and per-image values of a split, for statistics and plots (not written to the JSON)."""

    boxes: np.ndarray  # (N, 4) xywh in the original pixels, as validation kept them (clipped)
    category_ids: np.ndarray  # (N,)
    image_ids: np.ndarray  # (N,) the image of each box
    image_side: np.ndarray  # (N,) the longer side of each box's image
    objects_per_image: np.ndarray  # (M,)
    image_sizes: np.ndarray  # (M, 2) width, height
    image_size: int | None  # the model's input size (data.image_size): the longer side of every image there

    @property
    def sqrt_area(self) -> np.ndarray:
        return np.sqrt(self.boxes[:, 2] * self.boxes[:, 3])

    @property
    def shorter_side(self) -> np.ndarray:
        return np.minimum(self.boxes[:, 2], self.boxes[:, 3])

    @property
    def input_scale(self) -> np.ndarray:
        """Each box's image resized to the model's input, aspect kept: ``image_size / max(width, height)`` (NaN without an image size)."""
        return self.image_size / self.image_side if self.image_size else np.full(len(self.boxes), math.nan)

    @property
    def aspect_ratio(self) -> np.ndarray:
        return self.boxes[:, 2] / self.boxes[:, 3]


@dataclass
class SplitInspection:
    """What one split holds after validation, and what validation found wrong with it."""

    split: str
    images: int
    annotations: int
    crowd_annotations: int
    images_without_objects: int
    classes: list[ClassCount]
    most_objects_file: str | None
    image_sizes: dict[str, int]  # "WxH" -> images, most frequent first
    duplicates: list[list[ImageRef]]  # groups of images with the same bytes within the split
    validation: SplitReport
    arrays: SplitArrays = field(repr=False)

    @property
    def objects_per_image(self) -> dict[str, Any]:
        counts = self.arrays.objects_per_image
        histogram = Counter(counts.tolist())
        return {"min": int(counts.min()), "median": float(np.median(counts)), "mean": float(counts.mean()), "max": int(counts.max()),
                "histogram": {str(n): histogram[n] for n in sorted(histogram)}}  # fmt: skip

    @property
    def size_classes(self) -> dict[str, int]:
        """COCO's small, medium and large, by box area (width x height) in the original pixels."""
        area = self.arrays.boxes[:, 2] * self.arrays.boxes[:, 3]
        small, large = int((area < SMALL_SIDE**2).sum()), int((area >= LARGE_SIDE**2).sum())
        return {"small": small, "medium": int(area.size) - small - large, "large": large}

    @property
    def small_share(self) -> float | None:
        return self.size_classes["small"] / self.annotations if self.annotations else None

    @property
    def problems(self) -> int:
        return len(self.validation.dropped)

    def to_dict(self) -> dict[str, Any]:
        arrays = self.arrays
        widths, heights = arrays.image_sizes[:, 0], arrays.image_sizes[:, 1]
        at_input = None
        if arrays.image_size:
            at_input = {"image_size": arrays.image_size, "sqrt_area_px": distribution(arrays.sqrt_area * arrays.input_scale),
                        "shorter_side_px": distribution(arrays.shorter_side * arrays.input_scale)}  # fmt: skip
        report = self.validation
        return {
            "images": self.images, "annotations": self.annotations, "crowd_annotations": self.crowd_annotations,
            "images_without_objects": self.images_without_objects,
            "classes": {c.name: {"id": c.id, "annotations": c.annotations, "images": c.images} for c in self.classes},
            "objects_per_image": {**self.objects_per_image, "most_in": self.most_objects_file},
            "box_size": {"sqrt_area_px": distribution(arrays.sqrt_area), **self.size_classes,
                         "small_share": self.small_share, "area": "box width x height, original pixels"},
            "box_size_at_input": at_input,
            "aspect_ratio": distribution(arrays.aspect_ratio),
            "image_sizes": {"counts": self.image_sizes, "width": [int(widths.min()), int(widths.max())],
                            "height": [int(heights.min()), int(heights.max())]},
            "duplicates": [[asdict(ref) for ref in group] for group in self.duplicates],
            "validation": {"annotation_file": report.annotation_file, "images": report.images, "images_kept": report.images_kept,
                           "annotations": report.annotations, "annotations_kept": report.annotations_kept,
                           "boxes_clipped": report.boxes_clipped, "dropped_by_kind": report.counts,
                           "dropped": [{**asdict(problem), "text": problem.text()} for problem in report.dropped]},
        }  # fmt: skip


@dataclass
class Suggestion:
    """A setting the data implies: the config key, the value, and why."""

    setting: str
    value: Any
    reason: str

    def override(self) -> str:
        return f"{self.setting}={self.value}"


@dataclass
class DatasetInspection:
    """Every split of a dataset inspected (:func:`inspect_dataset`), and what the data suggests."""

    splits: dict[str, SplitInspection]
    classes: list[ClassCount]  # the trained classes (the training split's label map), counts over every split
    image_size: int | None
    on_invalid: str
    duplicates_checked: bool
    cross_split_duplicates: list[list[ImageRef]]
    suggestions: list[Suggestion]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON data (``inspection.json``)."""
        return {
            "classes": [{"id": c.id, "name": c.name} for c in self.classes],
            "image_size": self.image_size,
            "on_invalid": self.on_invalid,
            "duplicates_checked": self.duplicates_checked,
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
            "cross_split_duplicates": [[asdict(ref) for ref in group] for group in self.cross_split_duplicates],
            "suggestions": [asdict(s) for s in self.suggestions],
            "warnings": list(self.warnings),
        }

    def metrics(self) -> dict[str, float]:
        """The key numbers per split (``train/images``, ``train/small_share``, ...), for MLflow."""
        metrics: dict[str, float] = {"cross_split_duplicates": float(sum(len(g) for g in self.cross_split_duplicates))}
        for name, split in self.splits.items():
            sizes = split.size_classes
            values = {"images": split.images, "annotations": split.annotations, "images_without_objects": split.images_without_objects,
                      "max_objects_per_image": split.objects_per_image["max"], "small": sizes["small"], "medium": sizes["medium"],
                      "large": sizes["large"], "problems": split.problems, "duplicates": sum(len(g) for g in split.duplicates)}  # fmt: skip
            if split.small_share is not None:
                values["small_share"] = split.small_share
            metrics |= {f"{name}/{key}": float(value) for key, value in values.items()}
        return metrics


def detection_datasets(datamodule: Any) -> dict[str, Any]:
    """The DataModule's splits, read and validated; a :class:`ConfigError` when they hold no COCO records (another task's data)."""
    datamodule.setup()
    for name, dataset in datamodule.datasets.items():
        if not hasattr(dataset, "coco_content"):
            raise ConfigError(f"data: the {name} split is read by {type(dataset).__name__}, which holds no boxes; the inspection summarises "
                              "detection data (COCO records: data=coco, rbc_cells, yolo, voc, hf_datasets, shapes). Fix: pick a "
                              "detection data option.")  # fmt: skip
    return dict(datamodule.datasets)


def has_boxes(datamodule: Any) -> bool:
    """Whether every split of ``datamodule`` holds COCO records that :func:`inspect_dataset` can summarise."""
    datamodule.setup()
    return all(hasattr(dataset, "coco_content") for dataset in datamodule.datasets.values())


def inspect_dataset(datamodule: Any, duplicates: bool = True, on_invalid: str | None = None) -> DatasetInspection:
    """Inspects every split of ``datamodule`` (a :class:`~cvexp.data.VisionDataModule` of detection data) as validation kept it.

    ``duplicates`` hashes every image file (sha1 of its bytes) to find copies within and across
    splits: that reads every file, so ``cvexp.train``'s start-of-run summary leaves it out.
    ``on_invalid``: the data config's policy when the DataModule reads with another one
    (``cvexp.inspect`` reads with ``skip`` to list every problem); default, the DataModule's.
    """
    datasets = detection_datasets(datamodule)
    image_size = int(datamodule.image_size) if datamodule.image_size else None
    trained = datamodule.label_map.categories
    splits = {name: _inspect_split(name, dataset, [c.id for c in trained], image_size) for name, dataset in datasets.items()}
    cross: list[list[ImageRef]] = []
    if duplicates:
        hashes = {name: _file_hashes(name, dataset) for name, dataset in datasets.items()}
        for name, split in splits.items():
            split.duplicates = _groups(hashes[name])
        pooled: dict[str, list[ImageRef]] = defaultdict(list)
        for by_hash in hashes.values():
            for digest, refs in by_hash.items():
                pooled[digest] += refs
        cross = [refs for refs in _groups(pooled) if len({ref.split for ref in refs}) > 1]
    classes = [ClassCount(c.id, c.name, sum(_count(s, c.id).annotations for s in splits.values()),
                          sum(_count(s, c.id).images for s in splits.values())) for c in trained]  # fmt: skip
    inspection = DatasetInspection(splits, classes, image_size, on_invalid or str(datamodule.on_invalid), duplicates, cross, [], [])
    inspection.suggestions = suggest_settings(inspection)
    inspection.warnings = data_warnings(inspection)
    return inspection


def _count(split: SplitInspection, category_id: int) -> ClassCount:
    return next(c for c in split.classes if c.id == category_id)


def _inspect_split(name: str, dataset: Any, trained_ids: list[int], image_size: int | None) -> SplitInspection:
    content = dataset.coco_content()
    names = {int(c["id"]): str(c["name"]) for c in content["categories"]}
    images = {int(record["id"]): record for record in content["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
    for annotation in content["annotations"]:
        by_image[int(annotation["image_id"])].append(annotation)
    annotations = [a for image_id in images for a in by_image[image_id]]
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    category_ids = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    image_ids = np.array([a["image_id"] for a in annotations], dtype=np.int64)
    image_side = np.array([max(images[a["image_id"]]["width"], images[a["image_id"]]["height"]) for a in annotations], dtype=np.float64)
    objects = np.array([len(by_image[image_id]) for image_id in images], dtype=np.int64)
    sizes = np.array([(record["width"], record["height"]) for record in images.values()], dtype=np.int64).reshape(-1, 2)

    # Every trained class, with zeros where the split has none; then any other category the split's boxes use.
    ids = list(trained_ids) + sorted(set(category_ids.tolist()) - set(trained_ids))
    classes = [ClassCount(c, names.get(c, str(c)), int((category_ids == c).sum()), int(np.unique(image_ids[category_ids == c]).size))
               for c in ids]  # fmt: skip
    most = max(images, key=lambda image_id: len(by_image[image_id]))
    size_counts = Counter(f"{w}x{h}" for w, h in sizes.tolist())
    return SplitInspection(
        split=name,
        images=len(images),
        annotations=len(annotations),
        crowd_annotations=sum(int(a.get("iscrowd", 0)) for a in annotations),
        images_without_objects=int((objects == 0).sum()),
        classes=classes,
        most_objects_file=str(images[most]["file_name"]),
        image_sizes=dict(size_counts.most_common()),
        duplicates=[],
        validation=dataset.report,
        arrays=SplitArrays(boxes, category_ids, image_ids, image_side, objects, sizes, image_size),
    )


def _file_hashes(split: str, dataset: Any) -> dict[str, list[ImageRef]]:
    """sha1 of each kept image file's bytes -> the images with those bytes."""
    from rich.progress import track

    images = dataset.coco_content()["images"]
    found: dict[str, list[ImageRef]] = defaultdict(list)
    for record in track(images, description=f"hashing the {split} images", transient=True) if len(images) > 200 else images:
        path = Path(dataset.images_dir, record["file_name"])
        try:
            digest = hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()
        except OSError as error:
            raise DatasetError(f"{path}: image {record['id']} of the {split} split cannot be read to compare its content ({error}); it "
                               "passed validation moments ago, so it changed since or the disk failed. Fix: restore the file, or set "
                               "duplicates=false.") from error  # fmt: skip
        found[digest].append(ImageRef(split, int(record["id"]), str(record["file_name"])))
    return found


def _groups(by_hash: dict[str, list[ImageRef]]) -> list[list[ImageRef]]:
    """The groups of images that share their bytes, in a stable order (the first image's split and id)."""
    return sorted((refs for refs in by_hash.values() if len(refs) > 1), key=lambda refs: (refs[0].split, refs[0].image_id))


def suggest_settings(inspection: DatasetInspection) -> list[Suggestion]:
    """``model.config.num_queries`` for the most objects in one image, and ``data.image_size`` when small boxes fall under a feature cell."""
    splits = [s for s in inspection.splits.values() if s.annotations]
    if not splits:
        return []
    suggestions = []
    busiest = max(splits, key=lambda s: s.objects_per_image["max"])
    most = busiest.objects_per_image["max"]
    queries = math.ceil(most * (1 + QUERIES_MARGIN) / QUERIES_MULTIPLE) * QUERIES_MULTIPLE
    suggestions.append(Suggestion(
        "model.config.num_queries", queries,
        f"at least: the most objects in one image is {most} ({busiest.split}: {busiest.most_objects_file}); a DETR-family model "
        f"finds at most one object per query, so fewer queries miss objects; {QUERIES_MARGIN:.0%} more, rounded up to a multiple of "
        f"{QUERIES_MULTIPLE}, leaves queries for the no-object class",
    ))  # fmt: skip
    # The shorter box side relative to its image's longer side: times image_size, its pixels at the input.
    relative = np.concatenate([s.arrays.shorter_side / s.arrays.image_side for s in splits])
    low = float(np.percentile(relative, SMALL_BOX_PERCENTILE))
    current = inspection.image_size
    if low > 0 and (current is None or current * low < FEATURE_STRIDE):
        size = math.ceil(FEATURE_STRIDE / low / SIZE_MULTIPLE) * SIZE_MULTIPLE
        now = (f"at data.image_size={current} it is {current * low:.1f} px" if current else
               "data.image_size is null (the image processor's own size)")  # fmt: skip
        suggestions.append(Suggestion(
            "data.image_size", size,
            f"the {SMALL_BOX_PERCENTILE}th percentile of the shorter box side is {low:.4f} of its image's longer side; {now}, under "
            f"one cell of a stride-{FEATURE_STRIDE} feature map (the finest most detectors predict from); {size} (rounded up to a "
            f"multiple of {SIZE_MULTIPLE}) brings it to {size * low:.1f} px",
        ))  # fmt: skip
    return suggestions


def data_warnings(inspection: DatasetInspection) -> list[str]:
    """Problems validation found, rare classes, classes the validation split lacks, and copies of images (across splits: leakage)."""
    warnings = []
    problems = sum(split.problems for split in inspection.splits.values())
    if problems and inspection.on_invalid == "raise":
        warnings.append(f"{_plural(problems, 'record')} with problems (listed above, all in inspection.json): with "
                        "data.on_invalid=raise training stops at the first of them; fix the records, or train with "
                        "data.on_invalid=skip to drop them")  # fmt: skip
    elif problems:
        warnings.append(f"data.on_invalid=skip drops {_plural(problems, 'record')} (listed above, all in inspection.json): "
                        "training never sees them")  # fmt: skip
    train, val = inspection.splits.get("train"), inspection.splits.get("val")
    for category in inspection.classes:
        if train is not None and _count(train, category.id).annotations < FEW_ANNOTATIONS:
            warnings.append(f"class '{category.name}' has {_plural(_count(train, category.id).annotations, 'annotation')} in train (under "
                            f"{FEW_ANNOTATIONS}): too few to learn it reliably; label more, or merge it with a similar class")  # fmt: skip
        if val is not None and _count(val, category.id).annotations == 0:
            warnings.append(f"class '{category.name}' is absent from val: its AP is undefined there and checkpoint selection "
                            "ignores it; move some of its images to val")  # fmt: skip
    if inspection.cross_split_duplicates:
        pairs = "; ".join(" = ".join(f"{r.split}/{r.file_name}" for r in group) for group in inspection.cross_split_duplicates[:3])
        warnings.append(f"{_plural(len(inspection.cross_split_duplicates), 'image')} in more than one split (same file content): leakage, "
                        f"the val/test scores of those images measure memory, not generalisation; remove each from all but one "
                        f"split. {pairs}{' ...' if len(inspection.cross_split_duplicates) > 3 else ''}")  # fmt: skip
    for split in inspection.splits.values():
        if split.duplicates:
            extra = sum(len(group) - 1 for group in split.duplicates)
            warnings.append(f"{split.split}: {_plural(extra, 'image')} copying others of the split (same file content, "
                            f"{_plural(len(split.duplicates), 'group')}): they count twice in training and evaluation; "
                            "keep one of each")  # fmt: skip
    return warnings


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percentiles(values: np.ndarray, digits: int = 1) -> str:
    stats = distribution(values)
    return "-" if stats is None else "/".join(f"{stats[k]:.{digits}f}" for k in ("p5", "p50", "p95"))


def summary_table(inspection: DatasetInspection) -> Any:
    """The short form, one row per split: images, objects, classes, the most objects in an image, the small-box share, problems."""
    from rich.table import Table

    table = Table(title="data: what the splits hold (python -m cvexp.inspect for the full report)", title_justify="left")
    for column in ("split", "images", "objects", "classes", "max objects/image", "small boxes (< 32²)", "problems"):
        table.add_column(column, justify="left" if column == "split" else "right")
    trained = {c.id for c in inspection.classes}
    for name, split in inspection.splits.items():
        present = sum(1 for c in split.classes if c.annotations and c.id in trained)
        table.add_row(name, str(split.images), str(split.annotations), f"{present}/{len(trained)}", str(split.objects_per_image["max"]),
                      _share(split.small_share), str(split.problems) if split.problems else "-")  # fmt: skip
    return table


def inspection_tables(inspection: DatasetInspection) -> list[Any]:
    """The full report as Rich tables: splits, classes, box sizes, problems, duplicates, suggestions and warnings."""
    from rich.table import Table

    from cvexp.data.validation import validation_table

    splits = Table(title="data: splits", title_justify="left")
    for column in ("split", "images", "objects", "crowd", "images\nwithout objects", "objects/image\nmin/median/mean/max",
                   "image sizes\n(WxH: images)"):  # fmt: skip
        splits.add_column(column, justify="left" if column in ("split", "image sizes\n(WxH: images)") else "right")
    for name, split in inspection.splits.items():
        per_image = split.objects_per_image
        sizes = ", ".join(f"{size}: {count}" for size, count in list(split.image_sizes.items())[:3])
        sizes += f" (+{len(split.image_sizes) - 3} sizes)" if len(split.image_sizes) > 3 else ""
        splits.add_row(name, str(split.images), str(split.annotations), str(split.crowd_annotations), str(split.images_without_objects),
                       f"{per_image['min']}/{per_image['median']:.1f}/{per_image['mean']:.1f}/{per_image['max']}", sizes)  # fmt: skip

    classes = Table(title="data: classes (objects / images)", title_justify="left")
    classes.add_column("class")
    for name in inspection.splits:
        classes.add_column(name, justify="right")
    for category in inspection.classes:
        cells = [f"{_count(s, category.id).annotations} / {_count(s, category.id).images}" for s in inspection.splits.values()]
        classes.add_row(f"{category.id} {category.name}", *cells)

    # A row per measure, a column per split: the columns stay few, however many measures.
    boxes = Table(title="data: boxes (COCO sizes by box area w·h in the original pixels)", title_justify="left")
    boxes.add_column("")
    for name in inspection.splits:
        boxes.add_column(name, justify="right")
    arrays = [split.arrays for split in inspection.splits.values()]
    sizes = [(split.size_classes, max(split.annotations, 1)) for split in inspection.splits.values()]
    boxes.add_row("√(w·h) px, p5/p50/p95", *(_percentiles(a.sqrt_area) for a in arrays))
    for kind, rule in (("small", f"< {SMALL_SIDE}²"), ("medium", ""), ("large", f"≥ {LARGE_SIDE}²")):
        boxes.add_row(f"{kind} {rule}".strip(), *(f"{counts[kind]} ({counts[kind] / total:.1%})" for counts, total in sizes))
    if inspection.image_size:
        boxes.add_row(f"shorter side at {inspection.image_size} px input, p5/p50/p95",
                      *(_percentiles(a.shorter_side * a.input_scale) for a in arrays))  # fmt: skip
    boxes.add_row("aspect ratio w/h, p5/p50/p95", *(_percentiles(a.aspect_ratio, 2) for a in arrays))

    tables = [splits, classes, boxes, validation_table({name: split.validation for name, split in inspection.splits.items()})]
    problems = [(name, problem) for name, split in inspection.splits.items() for problem in split.validation.dropped[:PROBLEMS_SHOWN]]
    if problems:
        listed = Table(title=f"data: problems (the first {PROBLEMS_SHOWN} of each split; all in inspection.json)", title_justify="left")
        for column in ("split", "kind", "problem"):
            listed.add_column(column, overflow="fold")
        for name, problem in problems:
            listed.add_row(name, problem.kind, problem.text())
        tables.append(listed)
    groups = [group for split in inspection.splits.values() for group in split.duplicates] + inspection.cross_split_duplicates
    if groups:
        copies = Table(title="data: images with the same file content", title_justify="left")
        for column in ("where", "images"):
            copies.add_column(column, overflow="fold")
        for group in groups:
            where = "across splits (leakage)" if len({ref.split for ref in group}) > 1 else f"within {group[0].split}"
            copies.add_row(where, ", ".join(f"{ref.split}/{ref.file_name} (id {ref.image_id})" for ref in group))
        tables.append(copies)
    advice = Table(title="data: what the data suggests", title_justify="left")
    for column in ("setting", "why"):
        advice.add_column(column, overflow="fold")
    for suggestion in inspection.suggestions:
        advice.add_row(suggestion.override(), suggestion.reason)
    for warning in inspection.warnings:
        advice.add_row("[bold]warning[/bold]", warning)
    if not inspection.duplicates_checked:
        advice.add_row("note", "duplicates=false: image files were not compared")
    tables.append(advice)
    return tables


def data_summary(datamodule: Any) -> Any | None:
    """:func:`summary_table` of ``datamodule`` without hashing files (cheap: for the start of a training run);
    ``None`` for data without COCO records (classification, semantic segmentation)."""
    return summary_table(inspect_dataset(datamodule, duplicates=False)) if has_boxes(datamodule) else None
