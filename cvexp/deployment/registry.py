"""Registration: a checkpoint -> an MLflow pyfunc model version with the ``challenger`` / ``champion`` aliases.

:func:`run_registration` is the job behind ``python -m cvexp.register``; :func:`decide_promotion`
is the promotion rule on its own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_NAME_TAG = "cvexp.metric_name"
METRIC_VALUE_TAG = "cvexp.metric_value"


def decide_promotion(candidate: float | None, champion: float | None, has_champion: bool, mode: str = "max",
                     force: bool = False) -> tuple[bool, str]:  # fmt: skip
    """Whether a new model version becomes the champion, and why.

    Args:
        candidate: the new version's value of the configured metric (None or NaN: unknown).
        champion: the current champion's value of the same metric (None or NaN: unknown).
        has_champion: whether a champion exists at all.
        mode: ``max`` (higher is better, as mAP) or ``min``.
        force: promote whatever the numbers (``promote=true``).

    A first version becomes champion; afterwards only a strictly better known value, or ``force``,
    replaces the champion (a tie keeps the version that earned the alias first).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r}: use 'max' (higher is better) or 'min'.")
    candidate = None if candidate is None or math.isnan(candidate) else candidate
    champion = None if champion is None or math.isnan(champion) else champion
    if force:
        return True, "promote=true"
    if not has_champion:
        return True, "there is no champion yet"
    if candidate is None:
        return False, "the new version has no value of the metric to compare"
    if champion is None:
        return False, "the champion has no value of the metric to compare with (promote=true replaces it)"
    better = candidate > champion if mode == "max" else candidate < champion
    return better, f"{candidate:.6g} {'beats' if better else 'does not beat'} the champion's {champion:.6g} ({mode})"


@dataclass
class RegistrationSummary:
    """What a registration produced."""

    model_name: str
    version: str
    model_uri: str
    run_id: str
    export_dir: Path
    metric_name: str
    metric_value: float | None
    champion: bool
    reason: str


def _metric_from_run(client: Any, run_id: str, metric: str) -> float:
    metrics = client.get_run(run_id).data.metrics
    if metric not in metrics:
        raise KeyError(f"run_id={run_id} logged no metric '{metric}' (it has {sorted(metrics)[:20]}); "
                       "set metric= to one of them, or leave run_id unset to evaluate at registration.")  # fmt: skip
    return float(metrics[metric])


def _evaluate_split(detector: Any, dataset: Any, batch_size: int) -> dict[str, float]:
    """COCO metrics of ``detector`` on ``dataset`` (the same evaluation as ``cvexp.evaluate``, no report files)."""
    from cvexp.evaluation.evaluator import evaluate_predictions, predict_dataset

    predictions = predict_dataset(detector, dataset, batch_size, description="evaluating")
    return evaluate_predictions(predictions, detector.label_map.categories)[1].metrics


def run_registration(cfg: DictConfig) -> RegistrationSummary:
    """The ``cvexp.register`` job: export the checkpoint, log it as a pyfunc model, register it, set aliases.

    The new version gets the ``challenger`` alias, and ``champion`` when :func:`decide_promotion`
    says so. The metric comes from ``cfg.run_id``'s logged metrics when a run is given, else from
    evaluating the checkpoint on the split that names the metric (``val/map`` -> the val split).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cvexp.deployment.detector import export_huggingface
    from cvexp.deployment.pyfunc import EXPORT_ARTIFACT, pyfunc_model_arguments
    from cvexp.evaluation.checkpoint import load_trained_detector
    from cvexp.evaluation.evaluator import evaluation_split
    from cvexp.tracking.mlflow import experiment_id

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    registry = cfg.registry
    output_dir = Path(cfg.paths.output_dir)
    detector = load_trained_detector(cfg.ckpt_path, device=cfg.get("device", "cpu"))
    export_dir = export_huggingface(detector, output_dir / EXPORT_ARTIFACT)

    split, _, metric_key = str(cfg.metric).rpartition("/")
    data_cfg = cfg.data if cfg.get("data") else detector.config.data
    dataset = evaluation_split(data_cfg, split or "val", detector.label_map.categories)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.registry_uri)
    if cfg.get("run_id"):
        metric_value: float | None = _metric_from_run(client, cfg.run_id, cfg.metric)
    else:
        metric_value = float(_evaluate_split(detector, dataset, int(data_cfg.get("batch_size") or 8))[metric_key])

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.registry_uri)
    experiment = experiment_id(client, registry.experiment_name, registry.get("artifact_location"))
    with mlflow.start_run(experiment_id=experiment, run_name=Path(cfg.ckpt_path).stem) as run:
        mlflow.log_params({"ckpt_path": str(cfg.ckpt_path), "metric": cfg.metric, "score_threshold": cfg.score_threshold,
                           "model.model_class": detector.config.model.get("model_class")})  # fmt: skip
        if cfg.get("run_id"):
            mlflow.set_tag("cvexp.source_run_id", cfg.run_id)
        if metric_value is not None:
            mlflow.log_metric(cfg.metric, metric_value)
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        # The input example: the split's first image, as a request sends it.
        example_image = Path(dataset.split.images_dir) / dataset.coco.imgs[dataset.image_ids[0]]["file_name"]
        info = mlflow.pyfunc.log_model(name="model", registered_model_name=registry.model_name,
                                       **pyfunc_model_arguments(detector, export_dir, example_image, float(cfg.score_threshold)))  # fmt: skip
    model_version = str(info.registered_model_version)
    if metric_value is not None:
        client.set_model_version_tag(registry.model_name, model_version, METRIC_NAME_TAG, cfg.metric)
        client.set_model_version_tag(registry.model_name, model_version, METRIC_VALUE_TAG, repr(metric_value))

    try:
        current = client.get_model_version_by_alias(registry.model_name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    champion_value = None
    if current is not None and current.tags.get(METRIC_NAME_TAG) == cfg.metric:
        champion_value = float(current.tags[METRIC_VALUE_TAG])
    client.set_registered_model_alias(registry.model_name, CHALLENGER, model_version)
    promote, reason = decide_promotion(metric_value, champion_value, current is not None, cfg.mode, bool(cfg.promote))
    if promote:
        client.set_registered_model_alias(registry.model_name, CHAMPION, model_version)

    summary = RegistrationSummary(registry.model_name, model_version, f"models:/{registry.model_name}/{model_version}", run.info.run_id,
                                  export_dir, cfg.metric, metric_value, promote, reason)  # fmt: skip
    print(f"registered {registry.model_name} version {model_version} ({cfg.metric}={metric_value}) as @{CHALLENGER}"
          + (f" and @{CHAMPION}" if promote else "") + f": {reason}")  # fmt: skip
    print(f"Hugging Face export: {export_dir}")
    print(f"serve it: MLFLOW_TRACKING_URI={registry.tracking_uri} mlflow models serve "
          f"-m 'models:/{registry.model_name}@{CHAMPION if promote else CHALLENGER}' --env-manager local -p 5001")  # fmt: skip
    return summary
