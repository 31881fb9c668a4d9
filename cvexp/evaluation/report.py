"""Human-facing run reports: the Rich summary table and training-curve plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Headline COCO numbers, in the order a reader scans them.
HEADLINE_METRICS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def metrics_table(title: str, columns: Mapping[str, Mapping[str, float]]) -> Table:
    """A table with one row per metric and one column per split: the task's overall metrics first (the COCO
    ones in the order a reader scans them), then the per-class ones (``ap/``, ``iou/``, ``recall/`` ...)."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    for name in columns:
        table.add_column(name, justify="right")
    present = [m for values in columns.values() for m in values if m != "loss"]
    overall = list(dict.fromkeys(m for m in present if "/" not in m))
    names = [m for m in HEADLINE_METRICS if m in overall] + [m for m in overall if m not in HEADLINE_METRICS]
    names += sorted({m for m in present if "/" in m})
    for name in names:
        cells = [_format(values.get(name)) for values in columns.values()]
        table.add_row(name, *cells)
    return table


def print_table(table: Table) -> None:
    Console(width=max(100, Console().width)).print(table)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return "n/a" if value < 0 or value != value else f"{value:.4f}"  # COCO's -1 and NaN: undefined


def plot_training_curves(history: Mapping[str, list[tuple[int, float]]], path: Path) -> Path:
    """Plots the losses and the validation metrics per epoch to ``path`` (PNG)."""
    from cvexp.evaluation.plots import pyplot

    plt = pyplot()
    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, points in history.items():
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        axis = loss_axis if "loss" in name else map_axis
        axis.plot(epochs, values, marker="o", markersize=3, label=name)
    loss_axis.set(title="Loss", xlabel="epoch", ylabel="loss")
    map_axis.set(title="Validation metrics", xlabel="epoch", ylabel="score", ylim=(0, 1))
    for axis in (loss_axis, map_axis):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
