"""The training job: config -> data, model, adapter -> fit -> test -> report.

Importable and testable without Hydra's command line; :mod:`cvexp.train` is its thin entry point.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from cvexp.artifact import ARTIFACT_DIR, ModelMetadata, load_checkpoint, public_model_class_name, save_artifact
from cvexp.data import BatchCollator
from cvexp.data.inspection import data_summary
from cvexp.data.pixels import MultiScalePixels
from cvexp.data.validation import validation_table, write_validation_report
from cvexp.engines.local import FitResult
from cvexp.engines.resume import ResumeState, resume_state
from cvexp.errors import ConfigError, instantiate
from cvexp.evaluation.evaluator import dataset_image_loader
from cvexp.evaluation.report import metrics_table, print_table
from cvexp.models.task_module import VisionTaskModule
from cvexp.tracking.mlflow import RESUMED_TAG, WEIGHTS_TAG, log_run_config, ui_command

log = logging.getLogger(__name__)

# <run dir>/data_validation.json: what validation kept and dropped per split, and images unreadable at training time.
VALIDATION_FILE = "data_validation.json"


@dataclass
class TrainingSummary:
    """What a training run produced, for the caller (and for sweepers: ``optimized_value``)."""

    optimized_metric: str
    optimized_value: float | None
    best_model_path: str | None
    val_metrics: dict[str, float]
    test_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    mlflow_run_id: str | None = None
    artifact_dir: Path | None = None  # the model artifact, <run dir>/model (cvexp.artifact)
    startup_seconds: float | None = None  # trainer=ray: from the cluster's start to the first training step


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def route_lightning_logs() -> None:
    """Sends Lightning's messages through the root logger only (Hydra's console and log file).

    Lightning adds console handlers of its own at import, so every message would print twice.
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in root.handlers:
        # Once per handler, however many runs this process makes (tests, sweeps).
        if not any(isinstance(f, _DropLightningTips) for f in handler.filters):
            handler.addFilter(_DropLightningTips())


def seed_and_threads(cfg: DictConfig) -> None:
    """Seeds every generator (``seed=0`` included) and sets torch's thread count."""
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))


def resume_run(cfg: DictConfig) -> ResumeState:
    """With ``ckpt_path`` (a resume): the interrupted run's thread count, unless ``num_threads`` is set, and the
    MLflow run to continue when it is in this run's store; nothing without one."""
    if not cfg.get("ckpt_path"):
        return ResumeState(None, None)
    state = resume_state(cfg.ckpt_path)
    if state.num_threads and not cfg.get("num_threads") and state.num_threads != torch.get_num_threads():
        log.info("resuming with the checkpoint's %d torch threads (num_threads=N chooses others)", state.num_threads)
        torch.set_num_threads(state.num_threads)
    run_id = state.mlflow_run_id
    if run_id and cfg.get("logger") and cfg.logger.get("tracking_uri"):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(run_id)
        except MlflowException:
            log.warning("the checkpoint's MLflow run %s is not in %s: the resumed training logs to a new run", run_id, cfg.logger.tracking_uri)
            run_id = None
    return ResumeState(run_id if cfg.get("logger") else None, state.num_threads)


def build_training(cfg: DictConfig) -> tuple[VisionTaskModule, Any]:
    """Instantiates the DataModule and the LightningModule from ``cfg``; nothing is trained."""
    datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation), sampler=instantiate(cfg.sampler) if cfg.get("sampler") else None)
    datamodule.prepare_data()  # e.g. writes the synthetic dataset on first use
    label_map = datamodule.label_map  # the class list comes from the data, never from config
    task = instantiate(cfg.task)
    adapter = instantiate(cfg.adapter, label_map=label_map)
    if adapter.task != task.name:
        raise ConfigError(f"adapter.name={cfg.adapter.get('name')} (the model option's adapter) serves {adapter.task} models, and "
                          f"task={task.name}. Fix: pick a {task.name} model (docs/models.md lists them by task), or task={adapter.task}.")  # fmt: skip
    detector = instantiate(cfg.model, label_map=label_map)
    pixels = instantiate(cfg.pixels)(detector.image_processor, datamodule.image_size)
    datamodule.collate_fn = BatchCollator(pixels, adapter)
    if cfg.get("multi_scale"):  # training batches at several sizes; evaluation at data.image_size
        if not datamodule.image_size:
            raise ConfigError("multi_scale: its scales are multiples of data.image_size, which is null here. Fix: set data.image_size.")
        multi_scale = MultiScalePixels.around(pixels, int(datamodule.image_size), list(cfg.multi_scale.scales), int(cfg.multi_scale.multiple_of))
        datamodule.train_collate_fn = BatchCollator(multi_scale, adapter)
    metadata = ModelMetadata(
        task=task.name,
        model_class=public_model_class_name(detector.model),
        adapter=OmegaConf.to_container(cfg.adapter, resolve=True),
        categories=list(label_map.categories),
        image_size=datamodule.image_size,
        weights=detector.weights,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    module = VisionTaskModule(
        model=detector.model,
        adapter=adapter,
        task=task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        backbone_lr_scale=cfg.get("backbone_lr_scale", 1.0),
        decay_norms_and_biases=cfg.get("decay_norms_and_biases", True),
        backbone_modules=detector.backbone_modules,
        image_processor=detector.image_processor,
        metadata=metadata,
        channels_last=pixels.channels_last,
        pixels=pixels,
        compile=cfg.get("compile", False),
    )
    return module, datamodule


def run_training(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> TrainingSummary:
    """Trains, tests the best checkpoint, prints the summary table and returns the summary.

    ``extra_callbacks`` are added to the configured ones (for programmatic use, e.g. benchmarks).
    """
    route_lightning_logs()
    seed_and_threads(cfg)
    resume = resume_run(cfg)
    module, datamodule = build_training(cfg)
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values() if callback]
    callbacks += extra_callbacks or []
    logger = instantiate(cfg.logger, **({"run_id": resume.mlflow_run_id} if resume.mlflow_run_id else {})) if cfg.get("logger") else False
    if not logger:
        # Learning rates can only be logged to a logger; Lightning refuses the callback without one.
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    engine = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    output_dir = Path(cfg.paths.output_dir)
    # Nothing is dropped silently: what validation kept and dropped, before training starts.
    reports = datamodule.validation_reports
    print_table(validation_table(reports))
    if (overview := data_summary(datamodule)) is not None:  # data with boxes: the short form of python -m cvexp.inspect
        print_table(overview)
    validation_file = write_validation_report(reports, output_dir / VALIDATION_FILE)
    if logger:
        resumed = {RESUMED_TAG: str(cfg.ckpt_path)} if resume.mlflow_run_id else {}
        # A continued run keeps its params (MLflow never changes a logged param; ckpt_path differs now).
        log_run_config(logger, cfg, output_dir, tags={WEIGHTS_TAG: module.metadata.weights.tag(), **resumed}, params=not resumed)
        module.metadata.mlflow_run_id = getattr(logger, "run_id", None)  # checkpoints and the artifact name their run
        logger.experiment.log_artifact(logger.run_id, str(validation_file))

    started = time.perf_counter()
    fit = engine.fit(module, datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - started

    val_metrics = _stage_metrics(fit.metrics, "val")
    test_metrics: dict[str, float] = {}
    if cfg.get("test_after_fit") and datamodule.has_split("test"):
        ckpt = fit.best_model_path if fit.best_model_path else None
        test_metrics = _stage_metrics(engine.test(module, datamodule, ckpt_path=ckpt), "test")

    summary = TrainingSummary(
        optimized_metric=cfg.optimized_metric,
        optimized_value=fit.best_score if fit.monitor == cfg.optimized_metric else fit.metrics.get(cfg.optimized_metric),
        best_model_path=fit.best_model_path,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        train_seconds=train_seconds,
        mlflow_run_id=getattr(logger, "run_id", None) if logger else None,
        startup_seconds=fit.startup_seconds,
    )
    if module.unreadable_images:  # skipped at read time (data.on_invalid=skip): added to the validation report
        write_validation_report(reports, validation_file, module.unreadable_images)
        if logger and summary.mlflow_run_id:
            logger.experiment.log_artifact(summary.mlflow_run_id, str(validation_file))
    summary.artifact_dir = write_model_artifact(fit, module, test_metrics, summary.mlflow_run_id, output_dir / ARTIFACT_DIR)
    if logger and summary.mlflow_run_id and summary.artifact_dir:
        logger.experiment.log_artifacts(summary.mlflow_run_id, str(summary.artifact_dir), artifact_path=ARTIFACT_DIR)
    report(summary, cfg, logger, module, datamodule)
    return summary


def write_model_artifact(fit: FitResult, module: VisionTaskModule, test_metrics: dict[str, float], mlflow_run_id: str | None,
                         output_dir: Path) -> Path | None:  # fmt: skip
    """Writes the run's model artifact (:mod:`cvexp.artifact`) for its best checkpoint, with that checkpoint's metrics.

    The model is rebuilt from the checkpoint as every consumer rebuilds it, so a run whose
    artifact is written has shown that its checkpoint loads. Without a checkpoint, a local run
    writes the model it ends with; a Ray run, whose driver holds no trained model, writes none.
    """
    checkpoint = fit.best_model_path or (fit.trainer.checkpoint_callback.last_model_path if fit.trainer and fit.trainer.checkpoint_callback else None)
    if checkpoint:
        loaded = load_checkpoint(Path(checkpoint))
        model, image_processor, metadata = loaded.model, loaded.image_processor, loaded.metadata
    elif fit.trainer is not None:
        model, image_processor, metadata = module.model, module.image_processor, copy.copy(module.metadata)
    else:
        log.warning("No checkpoint came back from the training workers: no model artifact is written.")
        return None
    if test_metrics:
        metadata.metrics = {**metadata.metrics, "test": dict(test_metrics)}
    metadata.mlflow_run_id = mlflow_run_id
    return save_artifact(model, image_processor, metadata, output_dir)


def _stage_metrics(metrics: dict[str, float], stage: str) -> dict[str, float]:
    prefix = f"{stage}/"
    return {name[len(prefix):]: value for name, value in metrics.items() if name.startswith(prefix)}


def report(summary: TrainingSummary, cfg: DictConfig, logger: Any, module: VisionTaskModule | None = None,
           datamodule: Any = None) -> None:  # fmt: skip
    """Prints the run's summary table, where its files are, and how to open MLflow.

    After a test, also writes the test split's evaluation report (plots and results json, see
    :func:`cvexp.evaluation.evaluator.write_report`) to ``<run dir>/evaluation/test`` and the MLflow run.
    """
    columns = {"val (last epoch)": summary.val_metrics}
    if summary.test_metrics:
        columns["test (best ckpt)"] = summary.test_metrics
    print_table(metrics_table(f"cvexp.train — {summary.train_seconds / 60:.1f} min of training", columns))
    best = "-" if summary.optimized_value is None else f"{summary.optimized_value:.4f}"
    lines = [
        f"best {summary.optimized_metric}: {best}",
        f"best checkpoint: {summary.best_model_path or '-'}",
        f"model artifact: {summary.artifact_dir or '-'}",
        f"data validation: {Path(cfg.paths.output_dir) / VALIDATION_FILE}"
        + (f" ({len(module.unreadable_images)} images skipped as unreadable during training)" if module and module.unreadable_images else ""),
        f"run directory: {cfg.paths.output_dir}",
    ]
    # Each process of a multi-process test holds only its share of the detections: the report
    # then comes from `python -m cvexp.evaluate` on the best checkpoint instead.
    single_process = module is not None and module._trainer is not None and module.trainer.world_size == 1
    if summary.test_metrics and cfg.get("report") and single_process and module.test_predictions:
        evaluation = module.task.write_report(module.test_predictions, module.adapter.label_map.categories,
                                              Path(cfg.paths.output_dir) / "evaluation" / "test",
                                              dataset_image_loader(datamodule.datasets["test"]), cfg.report)  # fmt: skip
        if logger and summary.mlflow_run_id:
            for path in evaluation.files.values():
                logger.experiment.log_artifact(summary.mlflow_run_id, str(path), artifact_path="evaluation/test")
        lines.append(f"test report (plots, results json): {Path(cfg.paths.output_dir) / 'evaluation' / 'test'}")
    if logger and summary.mlflow_run_id:
        lines.append(f"MLflow run {summary.mlflow_run_id}; open the UI with:\n    {ui_command(logger)}")
    for line in lines:
        print(line)
