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
    assert best_map50 >= 0.6, f"validation mAP50 peaked at {best_map50:.3f}"
