"""Evaluation plots of every task: PR curves, confusion matrices, per-class bars, images with their boxes, labels or masks.

matplotlib with the Agg backend: plots are written to files, never shown, and need no display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.adapters.base import Detections
from cvexp.data.labels import Category
from cvexp.data.targets import DetectionTarget
from cvexp.evaluation.coco_metric import CocoEvaluation

GROUND_TRUTH_COLOR = "#00c853"
# Long legends and axis labels (80 COCO classes) get smaller type so that they still fit.
_MANY_CLASSES = 20


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported late: matplotlib costs ~0.5 s to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Writes ``figure`` as a PNG at ``path`` (its folder made), closes it and returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path


def plot_pr_curves(evaluation: CocoEvaluation, categories: Sequence[Category], path: Path, iou: float = 0.5) -> Path:
    """Precision against recall at IoU ``iou`` per class (all areas, 100 detections), from COCOeval's precision array."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    recall = evaluation.recall_thresholds
    if evaluation.precision is None:
        axis.text(0.5, 0.5, "no detections", ha="center", va="center", transform=axis.transAxes)
    else:
        iou_index = int(np.argmin(np.abs(evaluation.iou_thresholds - iou)))
        curves = []
        for category in categories:
            precision = evaluation.precision[iou_index, :, evaluation.category_ids.index(category.id), 0, -1]
            if (precision < 0).all():  # no ground truth of this class: COCOeval leaves it undefined
                axis.plot([], [], linestyle="none", label=f"{category.name} (no ground truth)")
                continue
            curves.append(precision)
            axis.plot(recall, precision, linewidth=1.5, label=f"{category.name}  AP{iou * 100:.0f} {precision.mean():.3f}")
        if curves:
            mean = np.mean(curves, axis=0)
            axis.plot(recall, mean, color="black", linewidth=3, label=f"all classes  mAP{iou * 100:.0f} {mean.mean():.3f}")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"Precision-recall per class, IoU {iou:.2f}")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        small = len(categories) > _MANY_CLASSES
        axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="x-small" if small else "medium",
                    ncol=1 + len(categories) // 40, frameon=False)  # fmt: skip
    return save_figure(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "Confusion matrix",
                          background: bool = True) -> Path:  # fmt: skip
    """Counts with ground truth down and predictions across; with ``background``, the last row and column are background."""
    plt = pyplot()
    names = [*class_names, "background"] if background else list(class_names)
    size = max(5.0, 0.45 * len(names) + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="count")
    ticks = np.arange(len(names))
    fontsize = "x-small" if len(names) > _MANY_CLASSES else "medium"
    axis.set_xticks(ticks, names, rotation=45, ha="right", fontsize=fontsize)
    axis.set_yticks(ticks, names, fontsize=fontsize)
    axis.set(xlabel="predicted", ylabel="ground truth", title=title)
    if len(names) <= 2 * _MANY_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for row, column in np.ndindex(matrix.shape):
            axis.text(column, row, str(int(matrix[row, column])), ha="center", va="center", fontsize=fontsize,
                      color="white" if matrix[row, column] > threshold else "black")  # fmt: skip
    return save_figure(figure, path)


def draw_boxes(
    axis: Any,
    image: np.ndarray,
    detections: Detections | None,
    names: Mapping[int, str],
    score_threshold: float,
    target: DetectionTarget | None = None,
) -> None:
    """Shows ``image`` on ``axis`` with ground truth (dashed green) and detections scoring at least ``score_threshold``
    (instance masks, when the detections have them, tint their pixels in the class's colour)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    colors = plt.get_cmap("tab10")
    ids = sorted(names)
    axis.imshow(overlay_mask(image, instance_class_map(detections, score_threshold, image.shape[:2]), ids) if detections and detections.masks else image)
    axis.set_axis_off()
    if target is not None:
        for x, y, w, h in target.boxes.tolist():
            axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=GROUND_TRUTH_COLOR, linewidth=1.2, linestyle="--"))
    if detections is None:
        return
    keep = detections.scores >= score_threshold
    for (x, y, w, h), score, category_id in zip(
        detections.boxes[keep].tolist(), detections.scores[keep].tolist(), detections.category_ids[keep].tolist(), strict=True
    ):
        color = colors(ids.index(category_id) % 10) if category_id in names else "red"
        axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.5))
        axis.text(x, y, f"{names.get(category_id, category_id)} {score:.2f}", color="white", fontsize=7, va="bottom",
                  bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})  # fmt: skip


def plot_samples(
    samples: Sequence[tuple[np.ndarray, Detections, DetectionTarget]],
    categories: Sequence[Category],
    score_threshold: float,
    path: Path,
    columns: int = 4,
) -> Path:
    """A grid of images, each with its ground truth and the detections scoring at least ``score_threshold``."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    names = {c.id: c.name for c in categories}
    columns = max(1, min(columns, len(samples)))
    rows = max(1, math.ceil(len(samples) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows + 0.6), squeeze=False, constrained_layout=True)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, (image, detections, target) in zip(axes.flat, samples, strict=False):
        draw_boxes(axis, image, detections, names, score_threshold, target)
        shown = int((detections.scores >= score_threshold).sum())
        name = target.file_name or str(target.image_id)
        name = name if len(name) <= 45 else "…" + name[-44:]  # a long export name would overlap the next title
        axis.set_title(f"{name}\n{len(target.boxes)} true, {shown} predicted", fontsize=8)
    legend = [
        Line2D([], [], color=GROUND_TRUTH_COLOR, linestyle="--", label="ground truth"),
        Line2D([], [], color="black", label=f"prediction (score ≥ {score_threshold:g}, colour = class)"),
    ]
    figure.legend(handles=legend, loc="outside lower center", ncol=2, frameon=False)
    return save_figure(figure, path)


def render_detections(image: np.ndarray, detections: Detections, names: Mapping[int, str], score_threshold: float, path: Path) -> Path:
    """Writes one image with its detections scoring at least ``score_threshold`` drawn on it."""
    plt = pyplot()
    height, width = image.shape[:2]
    scale = 6.0 / max(height, width)  # a 6-inch longer side, whatever the image size
    figure = plt.figure(figsize=(width * scale, height * scale))
    axis = figure.add_axes((0, 0, 1, 1))
    draw_boxes(axis, image, detections, names, score_threshold)
    return save_figure(figure, path)


def class_colors(count: int) -> np.ndarray:
    """``(count, 3)`` uint8 colours, one per class: tab10 up to 10 classes, tab20 (pairs of shades) beyond."""
    palette = 10 if count <= 10 else 20
    cmap = pyplot().get_cmap(f"tab{palette}")
    return (np.array([cmap(index % palette)[:3] for index in range(count)]) * 255).astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, category_ids: Sequence[int], alpha: float = 0.6) -> np.ndarray:
    """``image`` in grey with each pixel tinted by its class in ``mask`` (category ids; other values, e.g. ignored
    pixels, stay grey). Grey underneath, so that the class colours never mix with the image's own."""
    colors = class_colors(len(category_ids))
    grey = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    tinted = np.repeat(grey[..., None], 3, axis=-1)
    for index, category_id in enumerate(category_ids):
        where = mask == category_id
        tinted[where] = (1 - alpha) * tinted[where] + alpha * colors[index]
    return tinted.astype(np.uint8)


def instance_class_map(detections: Detections, score_threshold: float, shape: tuple[int, int]) -> np.ndarray:
    """The category id of each pixel under a mask of a detection scoring at least ``score_threshold`` (-1 elsewhere);
    where masks overlap, the better detection's class."""
    from pycocotools import mask as coco_mask

    classes = np.full(shape, -1, dtype=np.int64)
    kept = (detections.scores >= score_threshold).nonzero().flatten()
    for index in kept[detections.scores[kept].argsort()].tolist():  # the best painted last, on top
        classes[coco_mask.decode(detections.masks[index]) > 0] = int(detections.category_ids[index])  # str counts read as bytes
    return classes


def plot_class_bars(values: Mapping[str, float], path: Path, title: str, xlabel: str) -> Path:
    """A horizontal bar per class (e.g. IoU, recall); NaN bars are labelled ``n/a``."""
    plt = pyplot()
    names = list(values)
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.35 * len(names) + 1.2)), constrained_layout=True)
    numbers = [0.0 if math.isnan(v) else v for v in values.values()]
    axis.barh(names, numbers, color="#1976d2")
    for row, value in enumerate(values.values()):
        axis.text(min(value, 1.0) if not math.isnan(value) else 0.0, row, " n/a" if math.isnan(value) else f" {value:.3f}", va="center", fontsize=8)
    axis.set(xlim=(0, 1.1), xlabel=xlabel, title=title)
    axis.invert_yaxis()
    return save_figure(figure, path)


def plot_image_grid(panels: Sequence[tuple[np.ndarray, str]], path: Path, columns: int = 4, legend: Mapping[str, np.ndarray] | None = None) -> Path:
    """A grid of images, each with its title; ``legend`` (name -> RGB uint8 colour) adds colour patches below."""
    from matplotlib.patches import Patch

    plt = pyplot()
    columns = max(1, min(columns, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows + 0.6), squeeze=False, constrained_layout=True)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, (image, title) in zip(axes.flat, panels, strict=False):
        axis.imshow(image)
        axis.set_title(title, fontsize=8)
    if legend:
        handles = [Patch(color=np.asarray(color) / 255, label=name) for name, color in legend.items()]
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), frameon=False, fontsize=8)
    return save_figure(figure, path)


def save_image(image: np.ndarray, path: Path) -> Path:
    """Writes an HWC uint8 image as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
