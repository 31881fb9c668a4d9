"""MLflow helpers: log a run's resolved config, log evaluation runs, and tell the user how to browse the store."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The tag that names where a run's weights started: random-init, a hub name@revision or a directory (sha256).
WEIGHTS_TAG = "cvexp.weights"
# On a run that a training resumed from a checkpoint continued: the checkpoint it resumed from.
RESUMED_TAG = "cvexp.resumed_from"


# Tags on the MLflow runs of a sweep. A sweep's runs share SWEEP_TAG (its directory), so the UI
# lists them with the filter  tags.sweep = '<sweep dir>'; they are also children of the parent run.
SWEEP_TAG = "sweep"
SWEEP_JOB_TAG = "sweep_job"
SWEEP_ROLE_TAG = "sweep_role"
_PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: nests a run under its parent in the UI


def multirun_hydra_config() -> DictConfig | None:
    """Hydra's config when this process runs a job of a multirun; None otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg if hydra_cfg.mode == RunMode.MULTIRUN else None


def parent_run_id(client: Any, experiment_id: str, sweep: str) -> str | None:
    """The MLflow parent run of the sweep whose directory is ``sweep``; None if there is none."""
    query = f"tags.{SWEEP_TAG} = '{sweep}' and tags.{SWEEP_ROLE_TAG} = 'parent'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_run_tags(client: Any, experiment_id: str) -> dict[str, str]:
    """The tags that put a job's MLflow run into its sweep; empty outside a multirun.

    Args:
        client: an ``mlflow.MlflowClient`` on the run's store.
        experiment_id: the run's experiment, where the sweep's parent run is looked up.
    """
    hydra_cfg = multirun_hydra_config()
    if hydra_cfg is None:
        return {}
    sweep = str(hydra_cfg.sweep.dir)
    tags = {SWEEP_TAG: sweep, SWEEP_JOB_TAG: str(hydra_cfg.job.num), SWEEP_ROLE_TAG: "job"}
    parent = parent_run_id(client, experiment_id, sweep)
    if parent:
        tags[_PARENT_RUN_TAG] = parent
    return tags


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"model.config.d_model": 64, ...}`` (MLflow params)."""
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list) and any(isinstance(item, dict | list) for item in node):
            for index, value in enumerate(node):
                visit(value, f"{prefix}.{index}")
        else:
            flat[prefix] = node

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def log_run_config(logger: Any, cfg: DictConfig, output_dir: Path, tags: dict[str, str] | None = None, params: bool = True) -> None:
    """Logs the flattened config as params (unless ``params`` is false), the resolved ``config.yaml`` as an artifact, and ``tags``.

    In a job of a sweep, also tags the run with its sweep (see :func:`sweep_run_tags`).
    """
    for name, value in (tags or {}).items():
        logger.experiment.set_tag(logger.run_id, name, value)
    if params:
        logger.log_hyperparams(flatten_config(cfg))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    logger.experiment.log_artifact(logger.run_id, str(path))
    # a job of a sweep: group its run with the sweep's others
    for name, value in sweep_run_tags(logger.experiment, logger.experiment_id).items():
        logger.experiment.set_tag(logger.run_id, name, value)


def ui_command(logger: Any) -> str:
    """The shell command that opens the MLflow UI on the logger's store."""
    return f"mlflow ui --backend-store-uri {logger._tracking_uri}"


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of the experiment ``name``, created as Lightning's ``MLFlowLogger`` would create it when missing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name, artifact_location=artifact_location)


def mlflow_metric_name(name: str) -> str:
    """``name`` with the characters MLflow rejects in metric names dropped (as Lightning's logger does)."""
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "", name)


def log_evaluation_run(logger_cfg: DictConfig, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                       artifacts: dict[str, Path], artifact_dir: str = "evaluation") -> str:  # fmt: skip
    """Logs one finished run to the store of ``logger_cfg`` (conf/logger/mlflow.yaml) and returns its id.

    ``artifacts`` go under ``artifact_dir`` in the run, except the one of kind ``config`` (at its root).

    Only the store's keys are read (``tracking_uri``, ``experiment_name``, ``artifact_location``):
    the experiment is created as Lightning's ``MLFlowLogger`` would create it.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    for key in ("tracking_uri", "experiment_name"):
        if not logger_cfg.get(key):
            raise ValueError(f"logger.{key} is not set: evaluation logs to MLflow (logger=mlflow); use logger=none to skip logging.")
    client = MlflowClient(tracking_uri=logger_cfg.tracking_uri)
    run = client.create_run(experiment_id(client, logger_cfg.experiment_name, logger_cfg.get("artifact_location")), run_name=run_name)
    run_id = run.info.run_id
    timestamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(mlflow_metric_name(name), float(value), timestamp, 0) for name, value in metrics.items()],
        params=[Param(name, str(value)) for name, value in params.items()],
    )
    for kind, path in artifacts.items():
        client.log_artifact(run_id, str(path), artifact_path=None if kind == "config" else artifact_dir)
    client.set_terminated(run_id)
    return run_id
