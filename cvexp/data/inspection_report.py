"""The ``cvexp.inspect`` job: a dataset's inspection (:mod:`cvexp.data.inspection`) printed, plotted, written and logged.

Writes to the run directory ``inspection.json`` (every number, every problem), the plots
(:data:`PLOTS`) and ``samples.png`` (training images with their boxes), and logs them with the key
numbers as metrics to an MLflow run (unless ``logger=none``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from cvexp.data.inspection import (
    FEATURE_STRIDE,
    LARGE_SIDE,
    SMALL_SIDE,
    DatasetInspection,
    SplitInspection,
    inspect_dataset,
    inspection_tables,
)
from cvexp.errors import instantiate

INSPECTION_FILE = "inspection.json"
SAMPLES_FILE = "samples.png"
# Sample images are drawn at most this large (longer side): enough to see a box, and samples.png stays small.
SAMPLE_SIDE = 512
# The splits keep their colours in every plot.
SPLIT_COLORS = {"train": "#1976d2", "val": "#ef6c00", "test": "#2e7d32"}


def run_inspection(cfg: DictConfig) -> DatasetInspection:
    """Inspects every split of ``cfg.data``, prints the tables, writes ``inspection.json``, the plots and the samples, logs them to MLflow.

    The splits are read with ``on_invalid=skip`` whatever the data config says, so that every
    problem validation finds is listed (under ``raise`` a training stops at the first of them;
    the report says so).
    """
    from cvexp.evaluation.report import print_table
    from cvexp.tracking.mlflow import log_evaluation_run

    datamodule = instantiate(cfg.data, on_invalid="skip")
    datamodule.prepare_data()  # e.g. writes the synthetic dataset on first use
    inspection = inspect_dataset(datamodule, duplicates=bool(cfg.get("duplicates", True)), on_invalid=str(cfg.data.get("on_invalid", "raise")))
    for table in inspection_tables(inspection):
        print_table(table)

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"inspection": output_dir / INSPECTION_FILE}
    files["inspection"].write_text(json.dumps(inspection.to_dict(), indent=2))
    files |= write_plots(inspection, output_dir)
    if int(cfg.get("samples") or 0) > 0:
        files["samples"] = plot_sample_images(datamodule.datasets["train"], int(cfg.samples), output_dir / SAMPLES_FILE)

    print(f"inspection written to {output_dir}: {', '.join(path.name for path in files.values())}")
    if cfg.get("logger"):
        data_option = _data_option()
        params = {"data": data_option, "data.root": str(cfg.data.get("root")), "data.image_size": inspection.image_size,
                  "data.on_invalid": inspection.on_invalid, "duplicates": inspection.duplicates_checked,
                  **{f"suggested.{s.setting}": s.value for s in inspection.suggestions}}  # fmt: skip
        run_id = log_evaluation_run(cfg.logger, f"inspect-{data_option}", params, inspection.metrics(), files, artifact_dir="inspection")
        print(f"MLflow run {run_id} (experiment {cfg.logger.experiment_name})")
    return inspection


def _data_option() -> str:
    """The ``data=`` option of this run (``rbc_cells``), as Hydra chose it; ``data`` outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.choices.get("data") or "data") if HydraConfig.initialized() else "data"


def write_plots(inspection: DatasetInspection, output_dir: Path) -> dict[str, Path]:
    """Each of :data:`PLOTS` as ``<output_dir>/<name>.png``; returns them by name."""
    return {name: plot(inspection, output_dir / f"{name}.png") for name, plot in PLOTS.items()}


def _color(split: str, index: int) -> str:
    return SPLIT_COLORS.get(split, f"C{index + 3}")


def _split_histograms(axis: Any, inspection: DatasetInspection, values: Callable[[SplitInspection], np.ndarray],
                      label: Callable[[SplitInspection], str], xlabel: str, title: str, unit: str = "boxes", bins: np.ndarray | None = None,
                      lines: tuple[tuple[float, str, str], ...] = ()) -> None:  # fmt: skip
    """One outlined histogram per split on ``axis``, each bin its share of the split's values (splits of any size compare).

    Without ``bins``: 40 bins on a log axis over every split's values. ``lines``: dashed marks (x, text, the text's side of the line).
    """
    data = {name: values(split) for name, split in inspection.splits.items()}
    if bins is None:
        bins = _log_bins(list(data.values()))
        axis.set_xscale("log")
    for index, (name, split) in enumerate(inspection.splits.items()):
        if data[name].size:
            axis.hist(data[name], bins=bins, weights=np.full(data[name].size, 1.0 / data[name].size), histtype="step", linewidth=1.8,
                      color=_color(name, index), label=label(split))  # fmt: skip
    for x, text, side in lines:
        axis.axvline(x, color="black", linestyle="--", linewidth=1)
        if text:
            axis.text(x, axis.get_ylim()[1] * 0.97, f" {text} ", fontsize=8, va="top", ha="left" if side == "right" else "right")
    if axis.get_xscale() == "log":
        _plain_log_ticks(axis, [float(bins[0]), float(bins[-1]), *(x for x, _, _ in lines)], [x for x, _, _ in lines])
    axis.set(xlabel=xlabel, ylabel=f"share of the split's {unit}", title=title)
    axis.legend(frameon=False, fontsize=8)
    axis.grid(alpha=0.3)


def _plain_log_ticks(axis: Any, span: list[float], marked: list[float]) -> None:
    """Ticks at 1, 2 and 5 times the powers of ten in ``span`` and at the ``marked`` values, written as plain numbers
    (matplotlib's own write 3×10⁻¹ at every minor tick, which overlap)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    low, high = min(span), max(span)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    nice = [m * 10.0**e for e in decades for m in (1, 2, 5) if low <= m * 10.0**e <= high]
    # A round tick next to a marked one (100 beside 96) would print over it.
    ticks = sorted({t for t in nice if all(abs(math.log(t / x)) > 0.2 for x in marked)} | set(marked))
    axis.xaxis.set_major_locator(FixedLocator(ticks))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())


def _log_bins(values: list[np.ndarray], count: int = 40) -> np.ndarray:
    """``count`` log-spaced bins over every positive value (one bin around a single value)."""
    data = np.concatenate(values) if values else np.zeros(0)
    data = data[np.isfinite(data) & (data > 0)]
    if data.size == 0:
        return np.geomspace(1, 10, count + 1)
    low, high = float(data.min()), float(data.max())
    if high <= low * 1.01:
        low, high = low / 1.5, high * 1.5
    return np.geomspace(low / 1.02, high * 1.02, count + 1)


def plot_class_counts(inspection: DatasetInspection, path: Path) -> Path:
    """Objects per class, a group of bars per class (one per split), each bar with its count."""
    from cvexp.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    names = [category.name for category in inspection.classes]
    splits = list(inspection.splits.items())
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * len(splits) + 2), 4.5), constrained_layout=True)
    width = 0.8 / max(len(splits), 1)
    counts = np.array([[next(c.annotations for c in split.classes if c.id == category.id) for category in inspection.classes]
                       for _, split in splits], dtype=float).reshape(len(splits), len(names))  # fmt: skip
    for index, (name, _) in enumerate(splits):
        x = np.arange(len(names)) + (index - (len(splits) - 1) / 2) * width
        bars = axis.bar(x, counts[index], width, color=_color(name, index), label=name)
        if len(names) * len(splits) <= 40:
            axis.bar_label(bars, [f"{int(v)}" for v in counts[index]], fontsize=7, padding=1)
    positive = counts[counts > 0]
    if positive.size and positive.max() / positive.min() > 30:  # a rare class would be an invisible sliver on a linear axis
        axis.set_yscale("log")
    axis.set_xticks(np.arange(len(names)), names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    axis.set(ylabel="objects", title="Objects per class and split")
    axis.legend(frameon=False)
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def plot_objects_per_image(inspection: DatasetInspection, path: Path) -> Path:
    """The share of each split's images holding 0, 1, 2 ... objects, with the suggested ``num_queries``."""
    from cvexp.evaluation.plots import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(8, 4.5), constrained_layout=True)
    most = max(int(split.arrays.objects_per_image.max()) for split in inspection.splits.values())
    queries = tuple((s.value, f"num_queries ≥ {s.value}", "left") for s in inspection.suggestions if s.setting.endswith("num_queries"))
    _split_histograms(axis, inspection, lambda s: s.arrays.objects_per_image,
                      lambda s: f"{s.split}: {s.images} images, mean {s.arrays.objects_per_image.mean():.1f}, max {s.objects_per_image['max']}",
                      "objects in one image", "Objects per image", unit="images", bins=np.arange(-0.5, most + 1.5, max(1, (most + 1) // 60)),
                      lines=queries)  # fmt: skip
    return save_figure(figure, path)


def plot_box_sizes(inspection: DatasetInspection, path: Path) -> Path:
    """√(w·h) of the boxes in the original pixels with COCO's 32 and 96 px limits; beside it, their shorter
    side at the model's input size with the stride-8 feature cell."""
    from cvexp.evaluation.plots import pyplot, save_figure

    panels = 2 if inspection.image_size else 1
    figure, axes = pyplot().subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False, constrained_layout=True)
    original = axes[0, 0]

    def label(split: SplitInspection) -> str:
        shares, total = split.size_classes, max(split.annotations, 1)
        return f"{split.split}: {split.annotations} boxes, " + " / ".join(f"{shares[k] / total:.0%}" for k in ("small", "medium", "large"))

    _split_histograms(original, inspection, lambda s: s.arrays.sqrt_area, label, "√(w·h), original pixels (log scale)",
                      "Box sizes (legend: small / medium / large)", lines=((SMALL_SIDE, "", "right"), (LARGE_SIDE, "", "right")))  # fmt: skip
    (low, high), top = original.get_xlim(), original.get_ylim()[1]
    # Each size class named in the middle of its range (on the log axis), where the axis shows it.
    for (start, stop), text in (((low, SMALL_SIDE), "small"), ((SMALL_SIDE, LARGE_SIDE), "medium"), ((LARGE_SIDE, high), "large")):
        start, stop = max(start, low), min(stop, high)
        if start < stop:
            original.text(np.sqrt(start * stop), top * 0.97, text, fontsize=8, va="top", ha="center")
    if inspection.image_size:
        _split_histograms(axes[0, 1], inspection, lambda s: s.arrays.shorter_side * s.arrays.input_scale,
                          lambda s: f"{s.split}: p5 {np.percentile(s.arrays.shorter_side * s.arrays.input_scale, 5):.1f} px",
                          f"shorter box side at data.image_size={inspection.image_size}, px (log scale)", "Box sizes at the model's input",
                          lines=((FEATURE_STRIDE, f"stride {FEATURE_STRIDE}", "right"),))  # fmt: skip
    return save_figure(figure, path)


def plot_aspect_ratios(inspection: DatasetInspection, path: Path) -> Path:
    """Box width / height (log scale, 1 is square)."""
    from cvexp.evaluation.plots import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(8, 4.5), constrained_layout=True)
    _split_histograms(axis, inspection, lambda s: s.arrays.aspect_ratio,
                      lambda s: f"{s.split}: median {np.median(s.arrays.aspect_ratio) if s.annotations else float('nan'):.2f}",
                      "box width / height (log scale; < 1 tall, > 1 wide)", "Box aspect ratios", lines=((1.0, "square", "right"),))  # fmt: skip
    return save_figure(figure, path)


def plot_image_sizes(inspection: DatasetInspection, path: Path) -> Path:
    """Image width against height, a point per distinct size, its area by the number of images of that size."""
    from cvexp.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 5.5), constrained_layout=True)
    for index, (name, split) in enumerate(inspection.splits.items()):
        sizes = [(*map(int, size.split("x")), count) for size, count in split.image_sizes.items()]
        widths, heights, counts = (np.array(column, dtype=float) for column in zip(*sizes, strict=True))
        label = f"{name}: {split.images} images, {len(sizes)} size{'s' if len(sizes) > 1 else ''}"
        axis.scatter(widths, heights, s=20 + 200 * np.sqrt(counts / counts.max()), color=_color(name, index), alpha=0.5,
                     edgecolors="black", linewidths=0.5, label=label)  # fmt: skip
        for width, height, count in sizes[:3]:  # the most frequent
            axis.annotate(f"{width}x{height} ×{count}", (width, height), fontsize=7, xytext=(4, 4 + 9 * index), textcoords="offset points")
    limit = max(max(split.arrays.image_sizes.max() for split in inspection.splits.values()) * 1.25, 1)  # room for the labels
    axis.plot([0, limit], [0, limit], color="grey", linewidth=0.8, linestyle=":", label="square")
    axis.set(xlim=(0, limit), ylim=(0, limit), xlabel="width, px", ylabel="height, px", title="Image sizes")
    axis.legend(frameon=False, fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


# The plots of every inspection, by file name (without .png).
PLOTS: Mapping[str, Callable[[DatasetInspection, Path], Path]] = {
    "class_counts": plot_class_counts,
    "objects_per_image": plot_objects_per_image,
    "box_sizes": plot_box_sizes,
    "aspect_ratios": plot_aspect_ratios,
    "image_sizes": plot_image_sizes,
}


def sample_indices(count: int, samples: int) -> list[int]:
    """``samples`` positions spread evenly over ``count`` images, first and last included: the same every run."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(samples, count)).round()})


def plot_sample_images(dataset: Any, samples: int, path: Path, columns: int = 4) -> Path:
    """A grid of ``samples`` images of ``dataset`` (spread evenly over it) with their boxes and class names, as validation kept them."""
    from PIL import Image, ImageDraw, ImageFont

    from cvexp.data.images import load_rgb_image
    from cvexp.evaluation.plots import class_colors, plot_image_grid

    content = dataset.coco_content()
    categories = dataset.label_map.categories
    colors = dict(zip((c.id for c in categories), (tuple(int(v) for v in rgb) for rgb in class_colors(len(categories))), strict=True))
    names = {int(c["id"]): str(c["name"]) for c in content["categories"]}
    boxes: dict[int, list[dict[str, Any]]] = {}
    for annotation in content["annotations"]:
        boxes.setdefault(int(annotation["image_id"]), []).append(annotation)
    font = ImageFont.load_default(size=11)
    panels = []
    for index in sample_indices(len(content["images"]), samples):
        record = content["images"][index]
        image = Image.fromarray(load_rgb_image(Path(dataset.images_dir, record["file_name"])))
        scale = min(1.0, SAMPLE_SIDE / max(image.size))
        image = image.resize((round(image.width * scale), round(image.height * scale))) if scale < 1 else image
        draw = ImageDraw.Draw(image)
        objects = boxes.get(int(record["id"]), [])
        for annotation in objects:
            x, y, w, h = (v * scale for v in annotation["bbox"])
            color = colors.get(int(annotation["category_id"]), (255, 0, 0))
            draw.rectangle((x, y, x + w, y + h), outline=color, width=2)
            text = names.get(int(annotation["category_id"]), str(annotation["category_id"]))
            left, top, right, bottom = draw.textbbox((x + 2, y + 1), text, font=font)
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
            draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=font)
        name = str(record["file_name"])
        name = name if len(name) <= 45 else "…" + name[-44:]  # a long export name would overlap the next title
        panels.append((np.asarray(image), f"{name}\n{len(objects)} objects"))
    legend = {c.name: np.array(colors[c.id]) for c in categories}
    return plot_image_grid(panels, path, columns=columns, legend=legend)
