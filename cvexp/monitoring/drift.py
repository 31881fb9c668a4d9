"""Drift monitoring: a reference set of images and their predictions against a current batch.

:func:`run_monitoring` is the job behind ``python -m cvexp.monitor``. Features:

- inputs, one value per image: ``brightness`` (mean grey level), ``contrast`` (grey-level standard
  deviation), ``width``, ``height``;
- predictions, in the terms of the model's task (:meth:`cvexp.tasks.Task.prediction_features`):
  for detection (what scores at least ``score_threshold``) ``max_score`` and ``detections_per_image``
  per image, ``score`` and ``box_area`` (fraction of the image) per detection; for classification
  the top score; for semantic segmentation the share of the image each class covers; for instance
  segmentation instances per image and mask areas; and the predicted class frequencies.

Each numeric feature gets the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) and the
population stability index (PSI, over deciles of the reference); the class frequencies get the
chi-square test of a 2 x K contingency table (``scipy.stats.chi2_contingency``) and the PSI of the
class proportions. A feature drifts when its difference is both unlikely by chance (p-value below
``thresholds.p_value``) and large (PSI above ``thresholds.psi``): with thousands of detections a
test alone flags differences too small to matter, and a PSI alone flags noise in small samples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PSI_EPSILON = 1e-4  # an empty bin's proportion: keeps the logarithm finite


@dataclass
class FeatureSamples:
    """The values of every feature over one set of images."""

    numeric: dict[str, np.ndarray]
    class_counts: dict[str, int]


@dataclass
class FeatureDrift:
    """One feature's comparison: the test, its statistic and p-value, the PSI, and the verdict."""

    feature: str
    test: str
    statistic: float | None
    p_value: float | None
    psi: float | None
    drift: bool
    reference_size: int
    current_size: int
    note: str = ""


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Brightness and contrast (mean and standard deviation of the grey level, 0-255) and size of an HWC RGB image."""
    grey = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
    return {"brightness": float(grey.mean()), "contrast": float(grey.std()), "width": float(image.shape[1]), "height": float(image.shape[0])}


def collect_features(images: Sequence[np.ndarray], predictions: Sequence[Any], task: Any, category_names: dict[int, str],
                     score_threshold: float) -> FeatureSamples:  # fmt: skip
    """The feature values of ``images`` and their unthresholded predictions, in the terms of ``task`` (a :class:`cvexp.tasks.Task`)."""
    numeric: dict[str, list[float]] = {}
    class_counts = dict.fromkeys(category_names.values(), 0)
    for image, prediction in zip(images, predictions, strict=True):
        features = task.prediction_features(prediction, image.shape[:2], category_names, score_threshold)
        for name, value in {**image_statistics(image), **features.per_image}.items():
            numeric.setdefault(name, []).append(value)
        for name, values in features.per_item.items():
            numeric.setdefault(name, []).extend(values)
        for name in features.classes:
            class_counts[name] += 1
    return FeatureSamples({name: np.asarray(values, dtype=np.float64) for name, values in numeric.items()}, class_counts)


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference``, over the reference's quantile bins.

    Bins are ``(-inf, q1], (q1, q2], ..., (qk, inf)`` for the reference's distinct deciles, so a
    constant reference (every image 96 pixels wide) still separates a shifted current sample.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return proportions_psi(_bin_counts(reference, edges), _bin_counts(current, edges))


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


def proportions_psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI of two histograms over the same bins: sum of (c - r) * ln(c / r) over the bins' proportions."""
    reference = np.clip(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON, None)
    current = np.clip(current_counts / max(current_counts.sum(), 1), PSI_EPSILON, None)
    return float(np.sum((current - reference) * np.log(current / reference)))


def compare_numeric(name: str, reference: np.ndarray, current: np.ndarray, p_value: float, psi_threshold: float,
                    min_samples: int) -> FeatureDrift:  # fmt: skip
    """KS test and PSI of one numeric feature; too few values on either side is no verdict (not a drift)."""
    from scipy.stats import ks_2samp

    if min(len(reference), len(current)) < min_samples:
        return FeatureDrift(name, "ks", None, None, None, False, len(reference), len(current),
                            note=f"fewer than {min_samples} values on one side: not compared")  # fmt: skip
    result = ks_2samp(reference, current)
    psi = population_stability_index(reference, current)
    drift = bool(result.pvalue < p_value and psi > psi_threshold)
    return FeatureDrift(name, "ks", float(result.statistic), float(result.pvalue), psi, drift, len(reference), len(current))


def compare_classes(reference: dict[str, int], current: dict[str, int], p_value: float, psi_threshold: float,
                    min_samples: int) -> FeatureDrift:  # fmt: skip
    """Chi-square test of the 2 x K table of class counts, and the PSI of the class proportions."""
    from scipy.stats import chi2_contingency

    names = sorted(set(reference) | set(current))
    table = np.array([[reference.get(n, 0) for n in names], [current.get(n, 0) for n in names]], dtype=np.int64)
    sizes = table.sum(axis=1)
    observed = table[:, table.sum(axis=0) > 0]  # a class nobody predicted carries no information
    if sizes.min() < min_samples or observed.shape[1] < 2:
        return FeatureDrift("class_frequency", "chi2", None, None, None, False, int(sizes[0]), int(sizes[1]),
                            note=f"fewer than {min_samples} detections on one side, or one class only: not compared")  # fmt: skip
    result = chi2_contingency(observed)
    psi = proportions_psi(table[0], table[1])
    drift = bool(result.pvalue < p_value and psi > psi_threshold)
    return FeatureDrift("class_frequency", "chi2", float(result.statistic), float(result.pvalue), psi, drift, int(sizes[0]), int(sizes[1]))


def compare_features(reference: FeatureSamples, current: FeatureSamples, thresholds: DictConfig | dict) -> list[FeatureDrift]:
    """Every feature's comparison, with the ``thresholds`` of conf/monitor.yaml."""
    p_value, psi, min_samples = float(thresholds["p_value"]), float(thresholds["psi"]), int(thresholds["min_samples"])
    drifts = [compare_numeric(name, reference.numeric[name], current.numeric[name], p_value, psi, min_samples) for name in reference.numeric]
    drifts.append(compare_classes(reference.class_counts, current.class_counts, p_value, psi, min_samples))
    return drifts


def plot_features(reference: FeatureSamples, current: FeatureSamples, drifts: Sequence[FeatureDrift], path: Path) -> Path:
    """Histograms of each numeric feature (reference against current) and a bar chart of class frequencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = {d.feature: d for d in drifts}
    names = list(reference.numeric)
    columns = 3
    rows = -(-(len(names) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        ref, cur = reference.numeric[name], current.numeric[name]
        both = np.concatenate([ref, cur])
        bins = np.histogram_bin_edges(both, bins=20) if len(both) and np.ptp(both) > 0 else 10
        axis.hist(ref, bins=bins, alpha=0.55, density=True, label=f"reference ({len(ref)})")
        axis.hist(cur, bins=bins, alpha=0.55, density=True, label=f"current ({len(cur)})")
        axis.set_title(_title(name, verdicts[name]), fontsize=9, color="red" if verdicts[name].drift else "black")
        axis.legend(fontsize=7)
    axis = axes.flat[len(names)]
    classes = sorted(set(reference.class_counts) | set(current.class_counts))
    for offset, (label, counts) in enumerate((("reference", reference.class_counts), ("current", current.class_counts))):
        total = max(sum(counts.values()), 1)
        axis.bar(np.arange(len(classes)) + 0.4 * offset, [counts.get(c, 0) / total for c in classes], width=0.4, label=label)
    axis.set_xticks(np.arange(len(classes)) + 0.2, classes, rotation=30, fontsize=8)
    axis.set_title(_title("class_frequency", verdicts["class_frequency"]), fontsize=9,
                   color="red" if verdicts["class_frequency"].drift else "black")  # fmt: skip
    axis.legend(fontsize=7)
    for axis in axes.flat[len(names) + 1 :]:
        axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _title(name: str, drift: FeatureDrift) -> str:
    if drift.p_value is None:
        return f"{name}: not compared"
    return f"{name}: p={drift.p_value:.2g} PSI={drift.psi:.2f}{' DRIFT' if drift.drift else ''}"


@dataclass
class MonitoringSummary:
    """What a monitoring run found and wrote."""

    drift: bool
    drifted: list[str]
    features: list[FeatureDrift]
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None


def _images_and_detections(predictor: Any, inputs: str, batch_size: int) -> tuple[list[np.ndarray], list[Any]]:
    from cvexp.data.images import load_rgb_image
    from cvexp.inference.inputs import resolve_inputs

    images = [load_rgb_image(item.path) for item in resolve_inputs(inputs)]
    return images, predictor.predict_images(images, batch_size=batch_size, progress=True)


def run_monitoring(cfg: DictConfig) -> MonitoringSummary:
    """The ``cvexp.monitor`` job: features of ``cfg.reference`` and ``cfg.current``, compared; report and MLflow run."""
    import torch

    from cvexp.inference.predictor import Predictor
    from cvexp.tracking.mlflow import log_evaluation_run

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    predictor = Predictor.load(cfg.ckpt_path, device=cfg.get("device", "auto"))
    names = {category.id: category.name for category in predictor.label_map.categories}
    samples = {}
    for side in ("reference", "current"):
        images, detections = _images_and_detections(predictor, str(cfg[side]), int(cfg.batch_size))
        samples[side] = collect_features(images, detections, predictor.task, names, float(cfg.score_threshold))
    drifts = compare_features(samples["reference"], samples["current"], cfg.thresholds)
    drifted = [d.feature for d in drifts if d.drift]

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": output_dir / "drift_report.json"}
    report = {"drift": bool(drifted), "drifted": drifted, "reference": str(cfg.reference), "current": str(cfg.current),
              "ckpt_path": str(cfg.ckpt_path), "score_threshold": float(cfg.score_threshold),
              "thresholds": {key: float(value) for key, value in cfg.thresholds.items()},
              "features": [asdict(d) for d in drifts]}  # fmt: skip
    files["report"].write_text(json.dumps(report, indent=2))
    files["plots"] = plot_features(samples["reference"], samples["current"], drifts, output_dir / "drift_features.png")

    for d in drifts:
        status = "not compared" if d.p_value is None else f"{d.test} p={d.p_value:.3g} PSI={d.psi:.3f}"
        print(f"{'DRIFT' if d.drift else 'ok   '} {d.feature:22s} {status} (n={d.reference_size}/{d.current_size})")
    print(f"drift report: {files['report']}")
    run_id = None
    if cfg.get("logger"):
        metrics = {"drift": float(bool(drifted))}
        for d in drifts:
            if d.p_value is not None:
                metrics |= {f"{d.feature}/p_value": d.p_value, f"{d.feature}/psi": d.psi, f"{d.feature}/drift": float(d.drift)}
        params = {"ckpt_path": str(cfg.ckpt_path), "reference": str(cfg.reference), "current": str(cfg.current),
                  **{f"thresholds.{key}": value for key, value in cfg.thresholds.items()}}  # fmt: skip
        run_id = log_evaluation_run(cfg.logger, "monitor", params, metrics, files, artifact_dir="monitoring")
        print(f"MLflow run {run_id} (experiment {cfg.logger.experiment_name})")
    return MonitoringSummary(bool(drifted), drifted, drifts, files, run_id)
