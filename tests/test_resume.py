"""Kill and resume: a training killed with ``kill -9`` mid-epoch and resumed from ``last.ckpt`` ends exactly as the run
that was never stopped, in the same MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cvexp.paths import CONFIG_DIR

# 80 training images in batches of 8: 10 steps an epoch, 4 epochs, validated after each; last.ckpt every 7 steps.
# RT-DETR's recipe spelled out (callbacks=ema, multi_scale=rt_detr): the EMA and the batches' sizes resume too.
DRILL = ["data.prepare.num_train=80", "data.prepare.num_val=20", "data.prepare.num_test=10", "data.batch_size=8", "trainer.max_epochs=4",
         "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=7",
         "test_after_fit=false", "report=none", "num_threads=1", "augmentation=strong", "seed=3",
         "callbacks=ema", "multi_scale=rt_detr"]  # fmt: skip
KILLED_AT = 25  # in the third epoch; the last checkpoint before it is step 21, mid-epoch


def _train(root: Path, data_dir: Path, experiment: str, run: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVEXP_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cvexp.train", f"paths.data_dir={data_dir}", f"logger.experiment_name={experiment}",
               f"hydra.run.dir={root}/runs/{run}", *DRILL, *overrides]  # fmt: skip
    return subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=900)


def _final_val_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    return {name: value for name, value in client.get_run(run_id).data.metrics.items() if name.startswith("val/")}


@pytest.mark.long
def test_a_run_killed_mid_epoch_and_resumed_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "datasets"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")

    straight = _train(tmp_path, data_dir, "straight", "straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    killed = _train(tmp_path, data_dir, "drill", "killed", "+callbacks.kill._target_=tests.drills.KillAtStep", f"+callbacks.kill.step={KILLED_AT}")
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]  # killed by SIGKILL, not an error
    killed_dir = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    state = torch.load(killed_dir, weights_only=True)
    assert state["global_step"] == 21 and state["epoch"] == 2  # mid-epoch: 1 step into the third epoch
    assert not list(killed_dir.parent.glob(".*.tmp"))  # no half-written checkpoint left behind

    resumed = _train(tmp_path, data_dir, "drill", "resumed", f"ckpt_path={killed_dir}", "num_threads=null")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    (straight_run,) = client.search_runs([client.get_experiment_by_name("straight").experiment_id])
    drill_runs = client.search_runs([client.get_experiment_by_name("drill").experiment_id])
    assert len(drill_runs) == 1, "the resumed training continues the killed run's MLflow run"
    (drill_run,) = drill_runs
    assert drill_run.info.status == "FINISHED" and drill_run.data.tags["cvexp.resumed_from"] == str(killed_dir)
    expected, actual = _final_val_metrics(client, straight_run.info.run_id), _final_val_metrics(client, drill_run.info.run_id)
    assert expected.keys() == actual.keys() and "val/map" in expected
    assert all(abs(actual[name] - expected[name]) <= 1e-6 for name in expected), {n: (expected[n], actual[n]) for n in expected}
    # The last epoch's training loss, step by step, too.
    history = {m.step: m.value for m in client.get_metric_history(drill_run.info.run_id, "train/loss_step")}
    reference = {m.step: m.value for m in client.get_metric_history(straight_run.info.run_id, "train/loss_step")}
    assert [history[step] for step in range(30, 40)] == pytest.approx([reference[step] for step in range(30, 40)], abs=1e-6)
