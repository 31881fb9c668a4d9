"""Prediction: a trained model over a folder, a glob, a COCO split or a parquet table -> the task's results file.

:func:`run_prediction` is the job behind ``python -m cvexp.predict``. What runs the model is the
``engine`` config group (conf/engine/): in this process (``engine=local``) or on a pool of Ray Data
actors (``engine=ray``, :mod:`cvexp.inference.engines.ray`). Both turn a batch of decoded images into
:class:`ImageResult` with the same :meth:`PredictionJob.results_of`, and this module writes what they
stream back, so the results file does not depend on the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from cvexp.data.targets import Sample
from cvexp.errors import ConfigError, instantiate
from cvexp.inference.inputs import ParquetColumns, PredictionInputs, prediction_inputs


@dataclass
class ImageResult:
    """One image's predictions, as the results file holds them, and what ``images.json`` says of the image."""

    image_id: int
    file_name: str
    height: int
    width: int
    results: list[dict[str, Any]]
    rendered: str | None = None

    def info(self) -> dict[str, Any]:
        """The image as a COCO ``images`` entry."""
        return {"id": self.image_id, "file_name": self.file_name, "height": self.height, "width": self.width}


@dataclass(frozen=True)
class PredictionJob:
    """What every engine needs to predict: the model to load, how to run it, and what to write besides results.

    It is pickled to the Ray actors, which load the model once each.

    Args:
        ckpt_path: a model artifact, a Lightning checkpoint, or an export (``model.onnx``); on a
            multi-node Ray cluster, a path every node sees.
        device: ``auto`` (CUDA when the process has one), ``cpu``, ``cuda``, ...
        batch_size: images per forward pass.
        num_threads: torch intra-op threads per process (``None``: torch's default, which Ray sets
            to an actor's CPUs).
        render_dir: where to draw each image with its predictions (``None``: no drawings).
        render_score_threshold: what scores at least this is drawn.
    """

    ckpt_path: str
    device: str = "auto"
    batch_size: int = 8
    num_threads: int | None = None
    render_dir: str | None = None
    render_score_threshold: float = 0.5

    def load_predictor(self) -> Any:
        """The :class:`~cvexp.inference.predictor.Predictor` of ``ckpt_path``, on ``device``."""
        import torch

        from cvexp.inference.predictor import Predictor

        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        return Predictor.load(self.ckpt_path, device=self.device)

    def results_of(self, predictor: Any, samples: list[Sample]) -> list[ImageResult]:
        """The results of a batch of decoded images (drawn to ``render_dir`` when asked)."""
        predicted = predictor.predict_batches([predictor.collator(samples)], progress=False)
        names = {c.id: c.name for c in predictor.label_map.categories}
        images = []
        for (prediction, info), sample in zip(predicted, samples, strict=True):
            rendered = None
            if self.render_dir:
                path = Path(self.render_dir) / f"{info.image_id}_{Path(info.file_name).stem}.png"
                rendered = str(predictor.task.render(sample.image, prediction, names, self.render_score_threshold, path))
            rows = predictor.task.results([prediction], {info.image_id: info.file_name})
            images.append(ImageResult(info.image_id, info.file_name, info.size[0], info.size[1], rows, rendered))
        return images


class PredictionEngine(Protocol):
    """Runs a :class:`PredictionJob` over the inputs; yields each image's results, in input order."""

    def predict(self, job: PredictionJob, inputs: PredictionInputs) -> Iterator[ImageResult]: ...


@dataclass
class PredictionSummary:
    """What a prediction run wrote, and how fast it went."""

    results_path: Path
    images_path: Path
    num_images: int
    num_predictions: int
    seconds: float = 0.0
    rendered: list[Path] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds else 0.0


class ResultsFile:
    """Writes result rows as they come: a JSON list (``json``, the COCO results form) or a parquet table (``parquet``)."""

    def __init__(self, path: Path, output_format: str) -> None:
        if output_format not in ("json", "parquet"):
            raise ConfigError(f"output_format={output_format}: choose json (a COCO results json) or parquet.")
        self.path = path
        self.output_format = output_format
        self.count = 0
        self._json: Any = None
        self._parquet: Any = None

    def __enter__(self) -> ResultsFile:
        if self.output_format == "json":
            self._json = self.path.open("w")
            self._json.write("[")
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Appends ``rows`` (one image's, or many images')."""
        if not rows:
            return
        if self._json is not None:
            self._json.write(("," if self.count else "") + ",".join(json.dumps(row) for row in rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._parquet is None:  # the first rows fix the schema
                self._parquet = pq.ParquetWriter(self.path, pa.Table.from_pylist(rows).schema)
            self._parquet.write_table(pa.Table.from_pylist(rows, schema=self._parquet.schema))
        self.count += len(rows)

    def __exit__(self, *exc_info: object) -> None:
        if self._json is not None:
            self._json.write("]")
            self._json.close()
        elif self._parquet is not None:
            self._parquet.close()
        else:  # no prediction at all: still a valid, empty table
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"image_id": pa.array([], pa.int64())}), self.path)


def run_prediction(cfg: DictConfig) -> PredictionSummary:
    """The ``cvexp.predict`` job: every prediction of every input image, to ``predictions.json`` (or
    ``predictions.parquet``) in the run directory, in the form of the task's results file (COCO results
    rows for detection and instance segmentation).

    Also writes ``images.json`` (``id``, ``file_name``, ``height``, ``width`` of each image, a COCO
    ``images`` list) and, with ``render=true``, ``rendered/<id>_<name>.png``.
    """
    from rich.progress import track

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = prediction_inputs(str(cfg.inputs), cfg.get("annotation_file"), ParquetColumns(**cfg.get("parquet", {})))
    job = PredictionJob(
        ckpt_path=str(cfg.ckpt_path),
        device=str(cfg.get("device", "auto")),
        batch_size=int(cfg.batch_size),
        num_threads=int(cfg.num_threads) if cfg.get("num_threads") else None,
        render_dir=str(output_dir / "rendered") if cfg.get("render") else None,
        render_score_threshold=float(cfg.get("render_score_threshold", 0.5)),
    )
    engine: PredictionEngine = instantiate(cfg.engine)
    output_format = str(cfg.get("output_format", "json"))
    results_path = output_dir / f"predictions.{output_format}"
    images, rendered = [], []
    started = time.perf_counter()
    with ResultsFile(results_path, output_format) as results:
        for image in track(engine.predict(job, inputs), description="predicting", total=len(inputs), transient=True):
            results.write(image.results)
            images.append(image.info())
            if image.rendered:
                rendered.append(Path(image.rendered))
    seconds = time.perf_counter() - started
    summary = PredictionSummary(results_path, output_dir / "images.json", len(images), results.count, seconds, rendered)
    summary.images_path.write_text(json.dumps(images))
    print(f"{summary.num_predictions} predictions on {summary.num_images} images -> {summary.results_path} "
          f"({summary.images_per_second:.1f} images/s)")  # fmt: skip
    if summary.rendered:
        print(f"rendered images (score >= {job.render_score_threshold}) in {job.render_dir}")
    return summary
