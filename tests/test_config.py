"""Every option of every config group composes, resolves, and derives what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from cvexp.paths import CONFIG_DIR
from tests.conftest import compose_train_config

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "paths", "experiment"))
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]
EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR.parent / "experiments").glob("*.yaml"))


def _primary_config_of(group: str) -> str:
    """The primary config (train, register, ...) whose defaults list the group: train unless only another does."""
    for name in ["train", *sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "train")]:
        defaults = OmegaConf.load(CONFIG_DIR / f"{name}.yaml").get("defaults", [])
        if any(isinstance(entry, DictConfig) and group in entry for entry in defaults):
            return name
    return "train"


def test_groups_are_the_documented_ones() -> None:
    for group in ("model", "adapter", "data", "augmentation", "trainer", "sweeper", "logger", "callbacks", "optimizer", "scheduler", "debug"):
        assert group in GROUPS, f"conf/{group}/ is missing"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(tmp_path: Path, group: str, option: str) -> None:
    primary = _primary_config_of(group)
    cfg = compose_train_config(tmp_path, tmp_path / "data", [f"{group}={option}"], config_name=primary)
    if primary == "train":
        OmegaConf.resolve(cfg)  # every interpolation resolves (other jobs leave ??? fields, e.g. ckpt_path, to the user)
    if group not in ("debug", "sweeper", "logger") and option != "none":
        assert cfg[group], f"{group}={option} composed to an empty node"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path: Path, experiment: str) -> None:
    cfg = compose_train_config(tmp_path, tmp_path / "data", [f"+experiment={experiment}"])
    OmegaConf.resolve(cfg)


@pytest.mark.parametrize(
    ("model", "adapter"),
    [("deformable_detr", "sigmoid_detr"), ("conditional_detr", "sigmoid_detr"), ("detr", "detr"), ("yolos", "detr"),
     ("rt_detr", "rt_detr"), ("rt_detr_v2", "rt_detr"), ("d_fine", "rt_detr")],  # fmt: skip
)
def test_adapter_follows_the_model_unless_overridden(tmp_path: Path, model: str, adapter: str) -> None:
    assert compose_train_config(tmp_path, tmp_path, [f"model={model}"]).adapter.name == adapter
    assert compose_train_config(tmp_path, tmp_path, [f"model={model}", "adapter=sigmoid_detr"]).adapter.name == "sigmoid_detr"


def test_mlflow_store_is_absolute_and_outside_the_run_directory(tmp_path: Path) -> None:
    cfg = compose_train_config(tmp_path, tmp_path / "data")
    uri = cfg.logger.tracking_uri
    assert uri.startswith("sqlite:////"), uri
    assert not uri.removeprefix("sqlite:///").startswith(cfg.paths.output_dir)


def _run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=CONFIG_DIR.parent)


@pytest.mark.parametrize("job", ["train", "evaluate", "predict", "register", "monitor"])
def test_help_is_fast_and_imports_no_torch(job: str) -> None:
    probe = (
        f"import sys, runpy; sys.argv = ['cvexp.{job}', '--help']\n"
        f"try:\n    runpy.run_module('cvexp.{job}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')"
    )
    result = _run_module("-c", probe)
    assert f"cvexp.{job}:" in result.stdout and "== Default config ==" in result.stdout, result.stdout + result.stderr
    assert "TORCH_NOT_IMPORTED" in result.stdout


def test_cfg_job_prints_the_composed_config() -> None:
    result = _run_module("-m", "cvexp.train", "--cfg", "job", "model=yolos")
    assert result.returncode == 0, result.stderr
    assert "YolosForObjectDetection" in result.stdout


def test_shell_completion_script_is_available() -> None:
    result = _run_module("-m", "cvexp.train", "-sc", "install=bash")
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout
