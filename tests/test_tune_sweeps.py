"""Ray Tune sweeps (`python -m cvexp.train -m sweeper=asha ...`): early stopping, MLflow grouping, the best config."""

from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cvexp.paths import CONFIG_DIR
from cvexp.tuning import (
    add_tune_reporting,
    build_search_space,
    check_trial_fits,
    release_workers_when_stopped,
    split_arguments,
    trial_overrides,
    trial_resource_request,
)
from tests.conftest import running_processes

MAX_EPOCHS = 4


def _run_asha_sweep(tmp_path: Path, data_dir: Path, *overrides: str, sweeper: str = "asha") -> tuple[Path, str]:
    """``python -m cvexp.train -m sweeper=<sweeper>`` over four learning rates; returns (sweep dir, stdout)."""
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    # The learning rates that come first train; 1e-7 and 1e-6 barely move the loss, so ASHA stops
    # them at the first rung. val/loss, not val/map: after a few steps every trial's mAP is 0. The
    # test is about ASHA, so the model is pinned to one whose validation loss after three steps ranks
    # these rates in that order (Deformable DETR, without its paper's multi-scale batches: recipe=none);
    # the default RT-DETR's moves with batch-norm statistics too, and lr=1e-3 can trail 3e-4 at the
    # first rung and be stopped.
    command = [sys.executable, "-m", "cvexp.train", "-m", f"sweeper={sweeper}", f"paths.data_dir={data_dir}", "debug=smoke",
               "model=deformable_detr", "recipe=none",
               f"trainer.max_epochs={MAX_EPOCHS}", "report=none", "test_after_fit=false",
               "optimized_metric=val/loss", "callbacks.model_checkpoint.mode=min", "hydra.callbacks.sweep_summary.mode=min",
               "hydra.sweeper.num_samples=1", "hydra.sweeper.scheduler.grace_period=1", "hydra.sweeper.init.num_cpus=2",
               "++hydra.sweeper.search_space={optimizer.lr: {type: grid, values: [1e-3, 3e-4, 1e-7, 1e-6]}}", *overrides]  # fmt: skip
    result = subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multiruns" / "train").iterdir()
    return sweep_dir, result.stdout


def _epochs_reached(sweep_dir: Path) -> dict[float, int]:
    from ray.tune import ExperimentAnalysis

    return {
        trial.config["optimizer.lr"]: trial.last_result["epoch"] for trial in ExperimentAnalysis(str(sweep_dir / "tune")).trials
    }


def _ranking(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with (sweep_dir / "sweep_results.csv").open() as file:
        return {row["overrides"]: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_an_asha_sweep_stops_bad_trials_early_and_writes_the_best_config(tmp_path: Path, shared_data_dir: Path) -> None:
    raylets_before = running_processes("raylet")
    sweep_dir, stdout = _run_asha_sweep(tmp_path, shared_data_dir)

    epochs = _epochs_reached(sweep_dir)
    assert sorted(epochs) == [1e-7, 1e-6, 3e-4, 1e-3]
    assert epochs[1e-3] == MAX_EPOCHS and epochs[1e-7] < MAX_EPOCHS  # the first trial is never stopped

    rows = _ranking(sweep_dir)
    assert rows["optimizer.lr=0.001"]["rank"] == "1" and rows["optimizer.lr=0.001"]["status"] == "COMPLETED"
    assert rows["optimizer.lr=1e-07"]["status"] == "STOPPED"
    assert "ranked by val/loss" in stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("cvexp-train").experiment_id], filter_string=f"tags.sweep = '{sweep_dir}'"
    )
    (parent,) = [run for run in runs if run.data.tags["sweep_role"] == "parent"]
    jobs = {run.data.tags["sweep_job"]: run for run in runs if run.data.tags["sweep_role"] == "job"}
    assert len(jobs) == 4 and {run.data.tags["mlflow.parentRunId"] for run in jobs.values()} == {parent.info.run_id}
    statuses = {row["overrides"]: jobs[row["job"]].info.status for row in rows.values()}
    assert statuses["optimizer.lr=0.001"] == "FINISHED" and statuses["optimizer.lr=1e-07"] == "KILLED"

    best = sweep_dir / "best_experiment.yaml"
    assert best.read_text().startswith("# @package _global_\n")
    assert OmegaConf.load(best) == {"optimizer": {"lr": 0.001}}
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    shutil.copy(best, presets / "tuned.yaml")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{presets.parent}]", "+experiment=tuned"])
    assert cfg.optimizer.lr == 0.001
    GlobalHydra.instance().clear()

    assert running_processes("raylet") <= raylets_before  # the sweep's local Ray cluster is gone


@pytest.mark.long  # about 4 minutes: CI runs the single-process ASHA test above
def test_asha_stops_trials_that_train_with_ray_train_workers(tmp_path: Path, shared_data_dir: Path) -> None:
    raylets_before = running_processes("raylet")
    # The preset as shipped: one trial at a time, each a Ray Train run of two DDP workers (the two CPUs).
    # In grid order, 1e-3 sets the first rung; the others trail it there. A stopped trial's Ray Train
    # run is killed with it and leaves its placement group holding both CPUs: the sweep's reaper must
    # free them, or the next trial waits forever. Without the dashboard, Ray's own cleaner cannot.
    sweep_dir, stdout = _run_asha_sweep(tmp_path, shared_data_dir, "trainer.checkpoint_score_order=min",
                                        "trainer.limit_train_batches=10", "hydra.sweeper.init.include_dashboard=false",
                                        sweeper="asha_ray_train")  # fmt: skip

    epochs = _epochs_reached(sweep_dir)  # reported by the workers, through the trials, to Tune
    assert sorted(epochs) == [1e-7, 1e-6, 3e-4, 1e-3]
    assert epochs[1e-3] == MAX_EPOCHS and min(epochs.values()) < MAX_EPOCHS
    rows = _ranking(sweep_dir)
    assert rows["optimizer.lr=0.001"]["status"] == "COMPLETED" and rows["optimizer.lr=0.001"]["rank"] == "1"
    stopped = {overrides for overrides, row in rows.items() if row["status"] == "STOPPED"}
    assert stopped == {f"optimizer.lr={lr}" for lr, reached in epochs.items() if reached < MAX_EPOCHS} != set(), rows
    assert all(row["val/loss"] not in ("", "-") for row in rows.values())  # a stopped trial keeps its best value
    assert len(list((tmp_path / "outputs" / "ray").glob("cvexp-*"))) == 4  # each trial was its own Ray Train run

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cvexp-train").experiment_id],
                              filter_string=f"tags.sweep = '{sweep_dir}' and tags.sweep_role = 'job'")  # fmt: skip
    assert len(runs) == 4  # one MLflow run per trial, from its rank 0
    assert {run.data.params["trainer._target_"] for run in runs} == {"cvexp.engines.ray.RayEngine"}
    statuses = {run.data.tags["sweep_job"]: run.info.status for run in runs}
    assert {statuses[rows[overrides]["job"]] for overrides in stopped} == {"KILLED"}
    assert statuses[rows["optimizer.lr=0.001"]["job"]] == "FINISHED"
    # max_concurrent_trials=1: each trial starts after the previous one's last log.
    runs = sorted(runs, key=lambda run: run.info.start_time)
    for earlier, later in itertools.pairwise(runs):
        last_log = max(m.timestamp for key in earlier.data.metrics for m in client.get_metric_history(earlier.info.run_id, key))
        assert later.info.start_time >= last_log, "trials ran at the same time"
    freed = re.search(r"Freed the Ray Train workers' resources of (\d+) stopped trial", stdout)
    assert freed and int(freed.group(1)) == len(stopped), freed
    assert "ranked by val/loss" in stdout
    assert running_processes("raylet") <= raylets_before


def test_a_ray_train_trial_must_fit_the_cluster() -> None:
    config = OmegaConf.create({"trainer": {"_target_": "cvexp.engines.ray.RayEngine", "num_workers": 2, "cpus_per_worker": 1}})
    with pytest.raises(
        ValueError,
        match=r"resources_per_trial.cpu=1 plus trainer.num_workers=2 .* needs 3 CPUs per trial, and the Ray cluster has 2",
    ):
        check_trial_fits(config, {"cpu": 1}, cluster_cpus=2)
    check_trial_fits(config, {"cpu": 0}, cluster_cpus=2)
    check_trial_fits(OmegaConf.create({"trainer": {"_target_": "cvexp.engines.local.LocalEngine"}}), {"cpu": 1}, cluster_cpus=1)
    # Tune refuses a trial that reserves nothing: a Ray Train trial reserves a byte of memory, no CPU.
    assert trial_resource_request({"cpu": 0}) == {"cpu": 0, "memory": 1}
    assert trial_resource_request({"cpu": 1}) == {"cpu": 1}


def test_trials_report_to_tune_from_lightning_or_from_their_ray_train_run() -> None:
    local = OmegaConf.create({"trainer": {"_target_": "cvexp.engines.local.LocalEngine"}, "callbacks": {}})
    add_tune_reporting(local)
    assert local.callbacks.tune_report._target_ == "cvexp.tuning.TuneReportCallback" and "run_callbacks" not in local.trainer
    distributed = OmegaConf.create({"trainer": {"_target_": "cvexp.engines.ray.RayEngine"}, "callbacks": {}})
    add_tune_reporting(distributed)
    assert distributed.callbacks == {} and distributed.trainer.run_callbacks == [{"_target_": "cvexp.tuning.TrainReportToTune"}]
    # A Ray Train trial also registers its workers' placement group with the sweep's reaper.
    release_workers_when_stopped(distributed, "the-reaper")
    assert distributed.trainer.run_callbacks[-1] == {"_target_": "cvexp.engines.ray_train_callback.ReleaseWorkersWithController",
                                                     "reaper": "the-reaper"}  # fmt: skip
    release_workers_when_stopped(local, "the-reaper")
    assert "run_callbacks" not in local.trainer


def test_search_space_entries_and_command_line_sweeps_become_tune_domains() -> None:
    fixed, space = split_arguments(["debug=smoke", "model=detr,yolos", "optimizer.lr=tag(log,interval(1e-4,1e-2))"])
    assert fixed == ["debug=smoke"]
    assert space == {"model": {"type": "choice", "values": ["detr", "yolos"]},
                     "optimizer.lr": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}}  # fmt: skip
    domains = build_search_space({**space, "model.config.d_model": {"type": "grid", "values": [32, 64]}})
    assert domains["model"].categories == ["detr", "yolos"] and domains["model.config.d_model"] == {"grid_search": [32, 64]}
    assert trial_overrides({"optimizer.lr": 1e-7, "model": "detr", "flag": True}) == [
        "optimizer.lr=1e-07",
        "model=detr",
        "flag=true",
    ]
    with pytest.raises(ValueError, match=r"search_space\.optimizer\.lr: type loguniform needs lower, upper; upper missing"):
        build_search_space({"optimizer.lr": {"type": "loguniform", "lower": 1e-4}})
    with pytest.raises(ValueError, match=r"search_space\.x: expected \{type: choice\|grid"):
        build_search_space({"x": [1, 2]})
