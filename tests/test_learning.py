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
