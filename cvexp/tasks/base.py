"""The Task contract: what differs between detection, classification and segmentation, in one place.

A task is chosen by the ``task`` config group (conf/task/); its class says how predictions are
scored (the metric), reported (table, plots, results file), served (the JSON of one image) and
monitored (the prediction features whose drift is watched). Everything else — the LightningModule,
the engines, checkpoints and the model artifact, the predictor — is the same for every task, and
the model family's adapter translates between the model and the task's targets and predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torchmetrics import Metric

from cvexp.data.labels import Category


@dataclass
class EvaluationReport:
    """What a task's :meth:`Task.write_report` produced: the metrics and the files it wrote, by kind."""

    metrics: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    num_images: int = 0
    num_predictions: int = 0  # detections, masks or labels written to the results file


@dataclass
class PredictionFeatures:
    """What drift monitoring watches in one image's prediction (:mod:`cvexp.monitoring.drift`).

    ``per_image``: one value per image (e.g. the top score); ``per_item``: values of each predicted
    item (detections, pixels' classes); ``classes``: the predicted class names to count.
    """

    per_image: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


class Task(ABC):
    """A computer-vision task: its metric, report, results file, served response and drift features.

    Subclasses set :attr:`name` (recorded in the model artifact) and :attr:`headline` and implement
    the methods below; :func:`cvexp.tasks.task_named` finds a task by its name.
    """

    #: The task's name, as conf/task/ and the model artifact (``cvexp.json``) spell it.
    name: ClassVar[str]
    #: The metrics printed in one line per evaluation; the first also shows in the progress bar.
    headline: ClassVar[tuple[str, ...]]
    #: The file the report writes every prediction to (what the task's ecosystem reads).
    results_file: ClassVar[str]

    @abstractmethod
    def metric(self, categories: Sequence[Category]) -> Metric:
        """A torchmetrics ``Metric`` fed ``update(predictions, targets)`` during validation and test."""

    @abstractmethod
    def results(self, predictions: Iterable[Any], file_names: Mapping[int, str] | None = None) -> Any:
        """Every prediction as the results file holds it (JSON-ready); ``file_names`` (image id -> name) adds each image's file."""

    @abstractmethod
    def write_report(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category], output_dir: Path,
                     load_image: Callable[[int], np.ndarray], options: Mapping[str, Any]) -> EvaluationReport:  # fmt: skip
        """Scores ``(prediction, target)`` pairs and writes the metrics, the results file and plots to ``output_dir``.

        ``options`` is the ``report`` config node (conf/report/); each task reads the keys it documents.
        """

    @abstractmethod
    def response(self, prediction: Any, category_names: Mapping[int, str], params: Mapping[str, Any]) -> Any:
        """One image's prediction as the served model answers it (JSON-ready); ``params`` are the request's."""

    @abstractmethod
    def prediction_features(self, prediction: Any, image_shape: tuple[int, int], category_names: Mapping[int, str],
                            score_threshold: float) -> PredictionFeatures:  # fmt: skip
        """What drift monitoring compares in one image's prediction."""

    @abstractmethod
    def render(self, image: np.ndarray, prediction: Any, category_names: Mapping[int, str], score_threshold: float, path: Path) -> Path:
        """Draws ``prediction`` over ``image`` (what scores at least ``score_threshold``) and saves it as ``path`` (PNG)."""

    def evaluate(self, predictions: Sequence[tuple[Any, Any]], categories: Sequence[Category]) -> dict[str, float]:
        """The metrics of ``(prediction, target)`` pairs, as :meth:`metric` computes them in training."""
        metric = self.metric(categories)
        metric.update([prediction for prediction, _ in predictions], [target for _, target in predictions])
        return metric.compute()

    def log_line(self, values: Mapping[str, float]) -> str:
        """The headline metrics as ``name=value`` pairs, for one line per evaluation."""
        return " ".join(f"{name}={values[name]:.4f}" for name in self.headline if name in values)
