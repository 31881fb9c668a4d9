"""Sweeps as a user runs them (`python -m cvexp.train -m ...`): MLflow grouping and the ranking table."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from cvexp.paths import CONFIG_DIR
from cvexp.sweeps import rank_jobs


def _multirun(tmp_path: Path, data_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cvexp.train", "-m", f"paths.data_dir={data_dir}", "debug=smoke", "trainer.max_epochs=1",
               "report=none", *overrides]  # fmt: skip
    result = subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _sweep_runs(tmp_path: Path) -> tuple[Path, list, list]:
    (sweep_dir,) = (tmp_path / "outputs" / "multiruns" / "train").iterdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cvexp-train").experiment_id], filter_string=f"tags.sweep = '{sweep_dir}'")
    jobs = [run for run in runs if run.data.tags["sweep_role"] == "job"]
    parents = [run for run in runs if run.data.tags["sweep_role"] == "parent"]
    return sweep_dir, jobs, parents


def test_a_basic_sweep_is_one_group_in_mlflow_and_ends_with_a_ranking(tmp_path: Path, shared_data_dir: Path) -> None:
    result = _multirun(tmp_path, shared_data_dir, ["model=detr,yolos", "optimizer.lr=1e-4,3e-4"])

    sweep_dir, jobs, parents = _sweep_runs(tmp_path)
    assert len(jobs) == 4 and all(run.info.status == "FINISHED" for run in jobs)
    (parent,) = parents
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert sorted(run.data.tags["sweep_job"] for run in jobs) == ["0", "1", "2", "3"]

    with (sweep_dir / "sweep_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert sorted(row["overrides"] for row in rows) == [f"model={m} optimizer.lr={lr}" for m in ("detr", "yolos") for lr in ("0.0001", "0.0003")]
    assert {row["mlflow_run"] for row in rows} == {run.info.run_id for run in jobs}
    values = [float(row["val/map"]) for row in rows]
    assert values == sorted(values, reverse=True)
    assert (sweep_dir / "sweep_results.md").is_file() and "ranked by val/map" in result.stdout
    # Every job writes its own model artifact.
    assert sorted(p.parent.parent.name for p in sweep_dir.glob("*/model/cvexp.json")) == ["0", "1", "2", "3"]


def test_the_ray_launcher_runs_sweep_jobs_as_ray_tasks(tmp_path: Path, shared_data_dir: Path) -> None:
    result = _multirun(tmp_path, shared_data_dir, ["hydra/launcher=ray_jobs", "hydra.launcher.ray.init.num_cpus=2", "optimizer.lr=1e-4,3e-4"])

    assert "Ray Launcher is launching 2 jobs" in result.stdout + result.stderr
    sweep_dir, jobs, parents = _sweep_runs(tmp_path)
    assert len(jobs) == 2 and all(run.info.status == "FINISHED" for run in jobs) and len(parents) == 1
    assert len((sweep_dir / "sweep_results.csv").read_text().splitlines()) == 3
    assert sorted(p.parent.parent.name for p in sweep_dir.glob("*/model/cvexp.json")) == ["0", "1"]


def test_jobs_are_ranked_best_first_and_failed_jobs_last() -> None:
    jobs = [{"job": 0, "value": 0.2, "overrides": ["a=1", "x=0"]}, {"job": 1, "value": None, "overrides": ["a=2", "x=0"]},
            {"job": 2, "value": 0.5, "overrides": ["a=3", "x=0"]}]  # fmt: skip
    assert [(job["rank"], job["job"], job["swept"]) for job in rank_jobs(jobs, "max")] == [(1, 2, ["a=3"]), (2, 0, ["a=1"]), (3, 1, ["a=2"])]
    assert [job["job"] for job in rank_jobs(jobs, "min")] == [0, 2, 1]
