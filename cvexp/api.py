"""Run any cvexp job from Python (a notebook, a Databricks job, a script): ``cvexp.run("train", ["model=detr"])``.

The same config groups and overrides as ``python -m cvexp.<job>``, composed by Hydra from the same
``conf/`` and run in this process (no shell): the job's summary comes back as a Python object.

    import cvexp
    summary = cvexp.run("train", ["model=detr", "trainer.max_epochs=5"])
    metrics = cvexp.run("evaluate", [f"ckpt_path={summary.artifact_dir}"]).metrics

A call is one run (one output folder under ``outputs/runs/<job>/``, as ``python -m`` makes);
sweeps (``-m``) stay with the command line, whose launchers and sweepers own the processes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvexp.errors import ConfigError
from cvexp.paths import CONFIG_DIR

#: Each job: its primary config (``conf/<job>.yaml``) and the function that ``python -m cvexp.<job>`` runs.
JOBS = {
    "train": "cvexp.training:run_training",
    "evaluate": "cvexp.evaluation.evaluator:run_evaluation",
    "predict": "cvexp.inference.prediction:run_prediction",
    "register": "cvexp.deployment.registration:run_registration",
    "monitor": "cvexp.monitoring.drift:run_monitoring",
    "export": "cvexp.deployment.export:run_export",
    "convert": "cvexp.data.formats.conversion:run_conversion",
    "inspect": "cvexp.data.inspection_report:run_inspection",
}


def compose_job(job: str, overrides: Sequence[str] = ()) -> Any:
    """The config of ``python -m cvexp.<job> OVERRIDES``, with Hydra's runtime set as a run has it (its output folder made)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    if job not in JOBS:
        raise ConfigError(f"cvexp.run: no job '{job}'. Fix: one of {sorted(JOBS)}.")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=job):
        cfg = compose(config_name=job, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = cfg.hydra.runtime.get("cwd") or os.getcwd()
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a command-line run: the run folder needs it
    with read_write(cfg.hydra), open_dict(cfg):  # set_config made hydra read-only
        cfg.hydra.runtime.output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).resolve())
    HydraConfig.instance().set_config(cfg)
    output_dir = Path(cfg.hydra.runtime.output_dir)
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (output_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    (output_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return cfg


def run(job: str, overrides: Sequence[str] = ()) -> Any:
    """Runs ``python -m cvexp.<job> OVERRIDES`` in this process and returns the job's summary.

    ``train`` returns a :class:`~cvexp.training.TrainingSummary`, ``evaluate`` an
    :class:`~cvexp.evaluation.evaluator.EvaluationSummary`, and so on (:data:`JOBS` names each
    job's function). Errors are raised (a :class:`~cvexp.errors.CvexpError` names the setting to
    fix), not turned into an exit status.
    """
    cfg = compose_job(job, overrides)
    module, function = JOBS[job].split(":")
    return getattr(importlib.import_module(module), function)(cfg)
