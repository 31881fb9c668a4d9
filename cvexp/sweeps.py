"""Sweeps (``python -m cvexp.train -m ...``): one MLflow group per sweep and a ranking of its jobs.

:class:`SweepSummary` is a Hydra callback (registered in ``conf/hydra/default.yaml``). It works the
same with every launcher, the basic one and ``hydra/launcher=ray`` alike, because everything a job
contributes is written by the job itself: its ``job_result.json`` in its own output directory, and
its MLflow run tagged with the sweep (:func:`cvexp.tracking.mlflow.sweep_run_tags`, called when the run's config is logged).

- sweep start: an MLflow parent run for the sweep (when the config logs to MLflow);
- each job's end: ``<job dir>/job_result.json`` (overrides, status, the optimised metric's value);
- sweep end: the jobs ranked by that value, printed as a table and written to
  ``<sweep dir>/sweep_results.md`` and ``sweep_results.csv`` (also artifacts of the parent run).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cvexp.tracking.mlflow import SWEEP_JOB_TAG, SWEEP_ROLE_TAG, SWEEP_TAG, experiment_id, parent_run_id

log = logging.getLogger(__name__)

JOB_RESULT_FILE = "job_result.json"
class SweepSummary(Callback):
    """Groups a sweep's MLflow runs under a parent run and ranks its jobs when it ends.

    Args:
        mode: ``max`` when a higher optimised metric is better, ``min`` otherwise (as
            ``callbacks.model_checkpoint.mode``).
    """

    def __init__(self, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"hydra.callbacks.sweep_summary.mode={mode!r}: use max or min.")
        self.mode = mode

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        set_hydra_config(config)
        store = mlflow_store(config)
        if store is None:
            return
        client, experiment_id = store
        sweep = str(config.hydra.sweep.dir)
        run = client.create_run(experiment_id, run_name=f"sweep {Path(sweep).name}",
                                tags={SWEEP_TAG: sweep, SWEEP_ROLE_TAG: "parent"})  # fmt: skip
        log.info("MLflow parent run of this sweep: %s", run.info.run_id)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        hydra_cfg = config.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        write_job_result(Path(hydra_cfg.runtime.output_dir), int(hydra_cfg.job.num), list(hydra_cfg.overrides.task),
                         job_return.status.name, value)  # fmt: skip

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        set_hydra_config(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        metric = str(config.get("optimized_metric") or "value")
        jobs = rank_jobs(read_job_results(sweep_dir), self.mode)
        store = mlflow_store(config)
        parent = None
        if store is not None:
            client, experiment_id = store
            runs = client.search_runs([experiment_id], filter_string=f"tags.{SWEEP_TAG} = '{sweep_dir}'")
            run_ids = {run.data.tags.get(SWEEP_JOB_TAG): run.info.run_id for run in runs
                       if run.data.tags.get(SWEEP_ROLE_TAG) != "parent"}  # fmt: skip
            for job in jobs:
                job["mlflow_run"] = run_ids.get(str(job["job"]))
            parent = parent_run_id(client, experiment_id, str(sweep_dir))
        files = write_ranking(jobs, metric, sweep_dir)
        _print_ranking(jobs, metric, f"sweep {sweep_dir.name}: {len(jobs)} jobs ranked by {metric} ({self.mode})")
        print(f"ranking: {files[0]}")
        if store is not None and parent:
            client, _ = store
            best = next((job["value"] for job in jobs if job["value"] is not None), None)
            if best is not None:
                client.log_metric(parent, f"best_{metric}", best)
            for path in files:
                client.log_artifact(parent, str(path))
            client.set_terminated(parent)
            print(f"MLflow: parent run {parent}; its jobs have the tag {SWEEP_TAG} = '{sweep_dir}'")


def set_hydra_config(config: DictConfig) -> None:
    """Makes ``config`` Hydra's config in this process unless one is set (for the sweeping process)."""
    # Hydra sets its config for each job only, but the sweep's paths (hydra.sweep.dir, the MLflow
    # store) interpolate ${hydra:runtime.cwd} through it: without it they cannot be resolved here.
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        HydraConfig.instance().set_config(config)


def write_job_result(output_dir: Path, job: int, overrides: list[str], status: str, value: Any) -> None:
    """Writes ``<output_dir>/job_result.json``, what the ranking reads (``value``: the optimised metric, if a number)."""
    result = {
        "job": job,
        "overrides": overrides,
        "status": status,
        "value": float(value) if isinstance(value, int | float) else None,
        "output_dir": str(output_dir),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / JOB_RESULT_FILE).write_text(json.dumps(result, indent=2))


def read_job_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every ``job_result.json`` under ``sweep_dir`` (one per job that ended)."""
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob(f"*/{JOB_RESULT_FILE}"))]


def rank_jobs(jobs: list[dict[str, Any]], mode: str = "max") -> list[dict[str, Any]]:
    """Jobs best first by ``value`` (jobs without one last), each with its ``rank`` (1 = best) and
    ``swept``: its overrides less those every job shares (``debug=smoke`` ...), what tells jobs apart."""
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if len(jobs) > 1 else set()
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(jobs, key=lambda job: (job["value"] is None, sign * (job["value"] or 0.0), job["job"]))
    return [{"rank": index + 1, **job, "swept": [o for o in job["overrides"] if o not in shared]} for index, job in enumerate(ranked)]


_COLUMNS = ("rank", "job", "value", "overrides", "status", "mlflow_run", "output_dir")


def _cells(job: dict[str, Any]) -> list[str]:
    value = job.get("value")
    return [str(job["rank"]), str(job["job"]), "-" if value is None else f"{value:.4f}", " ".join(job["swept"]),
            job["status"], job.get("mlflow_run") or "-", job["output_dir"]]  # fmt: skip


def write_ranking(jobs: list[dict[str, Any]], metric: str, sweep_dir: Path) -> tuple[Path, Path]:
    """Writes the ranking as ``sweep_results.md`` and ``sweep_results.csv`` in ``sweep_dir``."""
    header = [metric if name == "value" else name for name in _COLUMNS]
    markdown = sweep_dir / "sweep_results.md"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(job)) + " |" for job in jobs]
    markdown.write_text("\n".join(lines) + "\n")
    table = sweep_dir / "sweep_results.csv"
    with table.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(_cells(job) for job in jobs)
    return markdown, table


def _print_ranking(jobs: list[dict[str, Any]], metric: str, title: str) -> None:
    from rich.table import Table

    from cvexp.evaluation.report import print_table

    table = Table(title=title)
    for name in _COLUMNS[:5]:
        table.add_column(metric if name == "value" else name, justify="right" if name in ("rank", "job", "value") else "left")
    for job in jobs:
        table.add_row(*_cells(job)[:5])
    print_table(table)


def mlflow_store(config: DictConfig) -> tuple[Any, str] | None:
    """(client, experiment id) of the config's MLflow logger; None when it does not log to MLflow."""
    logger_cfg = config.get("logger")
    if not logger_cfg or not logger_cfg.get("tracking_uri") or not logger_cfg.get("experiment_name"):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(logger_cfg.tracking_uri))
    # Created as Lightning's MLFlowLogger would create it, so that the jobs' runs land in it too.
    return client, experiment_id(client, str(logger_cfg.experiment_name), logger_cfg.get("artifact_location"))
