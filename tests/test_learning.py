"""The embedded default actually learns: `python -m cvexp.train`, as a user runs it (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cvexp.paths import CONFIG_DIR


@pytest.mark.slow
def test_default_training_reaches_map50(tmp_path: Path) -> None:
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cvexp.train"], cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cvexp-train").experiment_id])
    best_map50 = max(m.value for m in client.get_metric_history(run.info.run_id, "val/map_50"))
    # The issue asked for 0.6; the default RT-DETR reaches 0.9 by its fourth epoch and 0.99 by its
    # last (docs/benchmarks.md), so 0.9 catches a regression that 0.6 would let through.
    assert best_map50 >= 0.9, f"validation mAP50 peaked at {best_map50:.3f}"
    test_map50 = client.get_metric_history(run.info.run_id, "test/map_50")[-1].value
    assert test_map50 >= 0.85, f"test mAP50 of the best checkpoint: {test_map50:.3f}"


def _train(tmp_path: Path, overrides: list[str], timeout: int) -> tuple[MlflowClient, str, float]:
    """``python -m cvexp.train <overrides>`` as a user runs it: the client, the run id and its training seconds."""
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cvexp.train", *overrides], cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cvexp-train").experiment_id])
    return client, run.info.run_id, (run.info.end_time - run.info.start_time) / 1000


# The embedded default of each task: its headline metric, the bar the full run must reach (the
# issue's), and a shortened run that CI can afford (about 2 minutes on 2 cores) with its own lower bar.
TASK_DEFAULTS = {
    # full: 60 epochs, val accuracy 1.00 in about 90 s; short: 20 epochs reach about 0.9
    "classification": ("accuracy", 0.95, ["trainer.max_epochs=20"], 0.75),
    # full: 60 epochs, val mIoU 0.88 in about 5 min. Short: 24 epochs on 600 images measured 0.343, in
    # the plateau before the shapes separate, where an all-background model scores about 0.21.
    "semantic_segmentation": ("miou", 0.80, ["trainer.max_epochs=24", "data.prepare.num_train=600"], 0.30),
    # full: 30 epochs, val mask mAP50 0.73 in about 7 min. Short: 6 epochs measured 0.478 (about 100 s); an
    # untrained model scores 0.
    "instance_segmentation": ("mask_map_50", 0.60, ["trainer.max_epochs=6"], 0.25),
}


@pytest.mark.long
@pytest.mark.parametrize("task", sorted(TASK_DEFAULTS))
def test_each_task_default_learns_within_ten_minutes(tmp_path: Path, task: str) -> None:
    """``python -m cvexp.train task=<task>`` with no other override reaches the issue's bar on val and test."""
    metric, bar, _, _ = TASK_DEFAULTS[task]
    client, run_id, seconds = _train(tmp_path, [f"task={task}"], timeout=1500)
    best = max(m.value for m in client.get_metric_history(run_id, f"val/{metric}"))
    test = client.get_metric_history(run_id, f"test/{metric}")[-1].value
    print(f"task={task}: best val/{metric} {best:.4f}, test/{metric} {test:.4f}, run {seconds:.0f} s")
    assert best >= bar and test >= bar, f"task={task}: val/{metric} peaked at {best:.3f}, test {test:.3f} (bar {bar})"
    assert seconds <= 600, f"task={task}: the run took {seconds:.0f} s"


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASK_DEFAULTS))
def test_each_task_default_starts_to_learn(tmp_path: Path, task: str) -> None:
    """A shortened run of each task's default clears a lower bar: CI's check that the task still learns."""
    metric, _, short, bar = TASK_DEFAULTS[task]
    client, run_id, _ = _train(tmp_path, [f"task={task}", *short], timeout=900)
    best = max(m.value for m in client.get_metric_history(run_id, f"val/{metric}"))
    print(f"task={task} {' '.join(short)}: best val/{metric} {best:.4f}")
    assert best >= bar, f"task={task} {' '.join(short)}: val/{metric} peaked at {best:.3f} (bar {bar})"
