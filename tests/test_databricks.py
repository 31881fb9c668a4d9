"""The Databricks presets and the Asset Bundle in docs/databricks/: every task's overrides compose with the project's configs.

There is no workspace here, so nothing runs on Databricks; what can be checked is that the job
definition names jobs, config groups and settings that exist, and that the presets resolve to the
Databricks MLflow, Unity Catalog volumes and Ray on Spark.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cvexp.api import JOBS
from cvexp.paths import CONFIG_DIR
from tests.conftest import compose_train_config

BUNDLE = CONFIG_DIR.parent / "docs" / "databricks" / "databricks.yml"


def _tasks() -> list[dict]:
    bundle = yaml.safe_load(BUNDLE.read_text())
    (job,) = bundle["resources"]["jobs"].values()
    return job["tasks"]


def _substituted(parameter: str, variables: dict[str, str]) -> str:
    """A parameter as the bundle hands it to the task: ``${var.x}`` from its default, ``{{job.run_id}}`` a run's id."""
    parameter = re.sub(r"\$\{var\.(\w+)\}", lambda match: variables[match.group(1)], parameter)
    return parameter.replace("{{job.run_id}}", "1234")


@pytest.mark.parametrize("task", _tasks(), ids=lambda task: task["task_key"])
def test_every_bundle_task_composes(task: dict, tmp_path: Path) -> None:
    variables = {name: spec["default"] for name, spec in yaml.safe_load(BUNDLE.read_text())["variables"].items()}
    assert (BUNDLE.parent / task["spark_python_task"]["python_file"]).is_file()
    job, *overrides = [_substituted(p, variables) for p in task["spark_python_task"]["parameters"]]
    assert job in JOBS
    cfg = compose_train_config(tmp_path, tmp_path, overrides, config_name=job)
    if "ray=spark" in overrides or "trainer=ray_on_spark" in overrides:
        cluster = cfg.trainer.cluster if job == "train" else cfg.engine.cluster
        assert cluster._target_ == "cvexp.engines.ray_cluster.RayOnSpark" and cluster.num_gpus_worker_node == 1
    if job == "train":
        OmegaConf.resolve(cfg)
        assert cfg.logger.tracking_uri == "databricks" and cfg.logger.experiment_name == "/Shared/cvexp-train"
        assert cfg.data.root.startswith(variables["volume"])


def test_the_volume_preset_puts_runs_on_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """paths=databricks: everything under the volume CVEXP_ROOT names, else under /Volumes/main/cvexp/files."""
    for root in (None, "/Volumes/cat/schema/vol"):
        if root:
            monkeypatch.setenv("CVEXP_ROOT", root)
        else:
            monkeypatch.delenv("CVEXP_ROOT", raising=False)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", ["paths=databricks", "logger=databricks"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        assert cfg.paths.outputs_dir == f"{root or '/Volumes/main/cvexp/files'}/outputs"
        assert cfg.logger.artifact_location is None  # the workspace's own artifact store
    GlobalHydra.instance().clear()
