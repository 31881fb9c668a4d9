"""``engine=ray``: batch prediction on Ray Data, over a pool of actors that each load the model once.

The inputs become a Ray dataset of rows (an image file's path, or a parquet table read by the Ray
workers themselves); ``map_batches`` hands batches of rows to :class:`PredictionActor`, which decodes
them, runs :meth:`~cvexp.inference.prediction.PredictionJob.results_of` (the same as ``engine=local``)
and returns one row per image; the driver streams those rows into the results file in input order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cvexp.engines.ray_cluster import RayCluster
from cvexp.errors import ConfigError
from cvexp.inference.inputs import PredictionInputs, row_sample
from cvexp.inference.prediction import ImageResult, PredictionJob

log = logging.getLogger(__name__)


class PredictionActor:
    """A Ray Data actor: loads the model once, then predicts batches of input rows (a dict of column arrays)."""

    def __init__(self, job: PredictionJob, base_dir: str | None = None) -> None:
        self.job = job
        self.base_dir = Path(base_dir) if base_dir else None
        self.predictor = job.load_predictor()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        samples = [row_sample(row, self.base_dir) for row in rows]
        images = self.job.results_of(self.predictor, samples)
        return {
            "image_id": [image.image_id for image in images],
            "file_name": [image.file_name for image in images],
            "height": [image.height for image in images],
            "width": [image.width for image in images],
            # JSON, not nested columns: the rows' fields differ between tasks and Arrow wants one schema per block
            "results": [json.dumps(image.results) for image in images],
            "rendered": [image.rendered or "" for image in images],
        }


class RayPredictionEngine:
    """Predicts on a Ray cluster: ``num_actors`` actors, each with ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs.

    Args:
        cluster: where (the ``ray`` config group): a fresh local cluster, ``ray.address=auto``, or Ray on Spark.
        num_actors: actors in the pool, each holding one copy of the model.
        cpus_per_actor, gpus_per_actor: Ray resources each actor reserves (a GPU actor runs on CUDA).
        preserve_order: results in input order (the order ``engine=local`` writes); ``false`` lets a
            slow batch not hold back the others.
        progress_bars: Ray Data's own per-operator progress bars (the job shows one of its own).
    """

    def __init__(
        self,
        cluster: RayCluster | None = None,
        num_actors: int = 1,
        cpus_per_actor: float = 1,
        gpus_per_actor: float = 0,
        preserve_order: bool = True,
        progress_bars: bool = False,
    ) -> None:
        if num_actors < 1:
            raise ConfigError(f"engine.num_actors={num_actors}: at least 1 actor is needed.")
        self.cluster = cluster or RayCluster()
        self.num_actors = int(num_actors)
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.preserve_order = preserve_order
        self.progress_bars = progress_bars

    def predict(self, job: PredictionJob, inputs: PredictionInputs) -> Iterator[ImageResult]:
        """Each image's results, streamed back as the actors finish their batches."""
        import ray.data

        with self.cluster:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = self.preserve_order
            context.enable_progress_bars = self.progress_bars
            # Ray Data 2.60's V2 file reader lists the files in a task that needs a whole CPU, which never
            # frees up while the actors hold every CPU (2 actors on 2 CPUs hung); the V1 reader's tasks
            # take the CPUs the read asks for (none, see PredictionInputs.to_ray).
            context.use_datasource_v2 = False
            log.info("Ray Data: %d prediction actor(s) x {CPU: %g, GPU: %g} on %s", self.num_actors, self.cpus_per_actor,
                     self.gpus_per_actor, self.cluster.describe())  # fmt: skip
            predictions = inputs.to_ray().map_batches(
                PredictionActor,
                fn_constructor_kwargs={"job": job, "base_dir": str(inputs.base_dir) if inputs.base_dir else None},
                batch_size=job.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.num_actors),
                num_cpus=self.cpus_per_actor,
                num_gpus=self.gpus_per_actor or None,
            )
            for row in predictions.iter_rows():
                yield ImageResult(int(row["image_id"]), str(row["file_name"]), int(row["height"]), int(row["width"]),
                                  json.loads(row["results"]), row["rendered"] or None)  # fmt: skip
