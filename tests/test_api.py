"""The Python API: ``cvexp.run(job, overrides)`` composes and runs a job in-process, as ``python -m cvexp.<job>`` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import cvexp
from cvexp.api import JOBS
from cvexp.errors import ConfigError
from cvexp.paths import CONFIG_DIR


def test_every_job_has_its_config_and_every_config_its_job() -> None:
    primary = {path.stem for path in CONFIG_DIR.glob("*.yaml")}
    assert set(JOBS) == primary
    assert all((CONFIG_DIR.parent / "cvexp" / f"{job}.py").is_file() for job in JOBS)  # each also a `python -m cvexp.<job>`


def test_train_then_evaluate_from_python(tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVEXP_ROOT", str(tmp_path))
    summary = cvexp.run("train", ["debug=smoke", "logger=none", "test_after_fit=false", f"paths.data_dir={shared_data_dir}"])
    assert summary.artifact_dir.is_relative_to(tmp_path / "outputs" / "runs" / "train") and (summary.artifact_dir / "cvexp.json").is_file()
    run_dir = summary.artifact_dir.parent
    stored = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert stored["trainer"]["limit_train_batches"] == 3 and stored["task_name"] == "train"  # debug=smoke, composed as the CLI would
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())[0] == "debug=smoke"
    evaluation = cvexp.run("evaluate", [f"ckpt_path={summary.artifact_dir}", "split=val", "logger=none"])
    assert evaluation.split == "val" and 0.0 <= evaluation.metrics["map_50"] <= 1.0
    assert evaluation.files["metrics"].is_file() and evaluation.files["metrics"].is_relative_to(tmp_path / "outputs" / "runs" / "evaluate")


def test_an_unknown_job_or_override_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVEXP_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="no job 'trian'.*'train'"):
        cvexp.run("trian")
    with pytest.raises(Exception, match="model=no_such_model|no_such_model"):
        cvexp.run("train", ["model=no_such_model"])
