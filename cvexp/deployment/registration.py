"""Registration: a model artifact -> an MLflow pyfunc model version with the ``challenger`` / ``champion`` aliases.

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

from cvexp.errors import ConfigError

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
    artifact_dir: Path
    metric_name: str
    metric_value: float | None
    champion_value: float | None
    champion: bool
    reason: str


def _score(predictor: Any, dataset: Any, batch_size: int, metric: str) -> float:
    """``metric`` (a metric name of the model's task) of ``predictor`` on ``dataset``: the same evaluation as ``cvexp.evaluate``,
    no report files."""
    predictions = predictor.predict_dataset(dataset, batch_size, description="evaluating")
    metrics = predictor.task.evaluate(predictions, predictor.label_map.categories)
    if metric not in metrics:
        raise ConfigError(f"metric=<split>/{metric}: no such {predictor.task.name} metric; choose one of {sorted(metrics)} "
                          f"(e.g. metric=val/{predictor.task.headline[0]}).")  # fmt: skip
    return float(metrics[metric])


def _champion_score(registry: DictConfig, version: Any, candidate: Any, dataset: Any, batch_size: int, metric: str,
                    device: str) -> tuple[float | None, str]:  # fmt: skip
    """The current champion's ``metric`` on the same ``dataset`` as the candidate, evaluated now; ``(None, why)`` when it cannot be."""
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from cvexp.deployment.pyfunc import MODEL_ARTIFACT
    from cvexp.errors import CvexpError
    from cvexp.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="cvexp-champion-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registry.model_name}/{version.version}", dst_path=tmp,
                                                             tracking_uri=registry.tracking_uri, registry_uri=registry.registry_uri))  # fmt: skip
            artifacts = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
            if MODEL_ARTIFACT not in artifacts:
                return None, f"version {version.version} holds no cvexp model artifact (registered by an older cvexp)"
            champion = Predictor.load(local / artifacts[MODEL_ARTIFACT]["path"], device=device)
        except (CvexpError, MlflowException, OSError) as error:
            return None, f"version {version.version} could not be loaded ({str(error).splitlines()[0]})"
        if champion.label_map != candidate.label_map:
            return None, f"version {version.version} predicts other categories ({[c.name for c in champion.label_map.categories]})"
        return _score(champion, dataset, batch_size, metric), ""


def run_registration(cfg: DictConfig) -> RegistrationSummary:
    """The ``cvexp.register`` job: log a model artifact as a pyfunc model, register it, set aliases.

    ``cfg.ckpt_path`` is a model artifact (logged as it is) or a checkpoint (its artifact is written
    first). The new version gets the ``challenger`` alias, and ``champion`` when
    :func:`decide_promotion` says so. The decision compares the new model with the current champion
    on the same split (the one that names ``cfg.metric``: ``val/map`` -> val), both evaluated in this
    call: never a number logged during training, or on other data.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cvexp.artifact import ARTIFACT_DIR
    from cvexp.deployment.pyfunc import pyfunc_model_arguments
    from cvexp.evaluation.evaluator import model_split
    from cvexp.inference.predictor import Predictor
    from cvexp.tracking.mlflow import experiment_id

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    registry = cfg.registry
    output_dir = Path(cfg.paths.output_dir)
    device = cfg.get("device", "cpu")
    predictor = Predictor.load(cfg.ckpt_path, device=device)
    if registry.get("model_name") is None:
        registry.model_name = f"cvexp-{predictor.task.name}"  # a champion is only ever compared with models of its task
    if predictor.model_file:  # an export (cvexp.export): logged with the artifact it lies in, and served by its runtime
        artifact_dir = Path(cfg.ckpt_path).parent
    else:
        artifact_dir = Path(cfg.ckpt_path) if Path(cfg.ckpt_path).is_dir() else predictor.save(output_dir / ARTIFACT_DIR)

    # Default: the metric the model's training kept its best checkpoint by (its task's, e.g. val/map, val/accuracy).
    metric_name = str(cfg.metric or predictor.config.get("optimized_metric") or f"val/{predictor.task.headline[0]}")
    split, _, metric_key = metric_name.rpartition("/")
    dataset, data_cfg = model_split(predictor, cfg.get("data"), split or "val", str(cfg.ckpt_path))
    batch_size = int(data_cfg.get("batch_size") or 8)
    metric_value = _score(predictor, dataset, batch_size, metric_key)

    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.registry_uri)
    try:
        current = client.get_model_version_by_alias(registry.model_name, CHAMPION)
    except MlflowException:  # no registered model, or no champion yet
        current = None
    champion_value, champion_note = (None, "")
    if current is not None:
        champion_value, champion_note = _champion_score(registry, current, predictor, dataset, batch_size, metric_key, device)

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.registry_uri)
    experiment = experiment_id(client, registry.experiment_name, registry.get("artifact_location"))
    with mlflow.start_run(experiment_id=experiment, run_name=Path(cfg.ckpt_path).name) as run:
        mlflow.log_params({"ckpt_path": str(cfg.ckpt_path), "metric": metric_name, "score_threshold": cfg.score_threshold,
                           "model_class": predictor.metadata.model_class, "num_images": len(dataset)})  # fmt: skip
        mlflow.set_tags({"cvexp.weights": predictor.metadata.weights.tag(),
                         **({"cvexp.source_run_id": predictor.metadata.mlflow_run_id} if predictor.metadata.mlflow_run_id else {})})  # fmt: skip
        mlflow.log_metric(metric_name, metric_value)
        if champion_value is not None:
            mlflow.log_metric(f"champion/{metric_name}", champion_value)
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        # The input example: the split's first image, as a request sends it.
        example_image = dataset.image_path(dataset.image_ids[0])
        info = mlflow.pyfunc.log_model(name="model", registered_model_name=registry.model_name,
                                       **pyfunc_model_arguments(predictor, artifact_dir, example_image, float(cfg.score_threshold),
                                                                **dict(cfg.get("serving") or {})))  # fmt: skip
    model_version = str(info.registered_model_version)
    client.set_model_version_tag(registry.model_name, model_version, METRIC_NAME_TAG, metric_name)
    client.set_model_version_tag(registry.model_name, model_version, METRIC_VALUE_TAG, repr(metric_value))

    client.set_registered_model_alias(registry.model_name, CHALLENGER, model_version)
    promote, reason = decide_promotion(metric_value, champion_value, current is not None, cfg.mode, bool(cfg.promote))
    if champion_note:
        reason += f"; {champion_note}"
    if promote:
        client.set_registered_model_alias(registry.model_name, CHAMPION, model_version)

    summary = RegistrationSummary(registry.model_name, model_version, f"models:/{registry.model_name}/{model_version}", run.info.run_id,
                                  artifact_dir, metric_name, metric_value, champion_value, promote, reason)  # fmt: skip
    print(f"registered {registry.model_name} version {model_version} ({metric_name}={metric_value:.4f} on {len(dataset)} images) as "
          f"@{CHALLENGER}" + (f" and @{CHAMPION}" if promote else "") + f": {reason}")  # fmt: skip
    print(f"model artifact: {artifact_dir}")
    print(f"serve it: MLFLOW_TRACKING_URI={registry.tracking_uri} mlflow models serve "
          f"-m 'models:/{registry.model_name}@{CHAMPION if promote else CHALLENGER}' --env-manager local -p 5001")  # fmt: skip
    return summary
