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
    if group in ("debug", "sweeper", "logger"):
        return
    option_file = CONFIG_DIR / group / f"{option}.yaml"
    if option_file.read_text().startswith("# @package _global_"):  # task, recipe: the option's keys land at the root
        declared = [key for key in OmegaConf.load(option_file) if key != "defaults"]
        assert declared and all(key in cfg for key in declared), f"{group}={option}: {declared} not all composed"
    elif option != "none":
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


# Each detection option trains with its paper's recipe (conf/recipe/, docs/models.md "Training recipes"):
# (EMA decay and warm-up or None, the first and last multi-scale factors or None, weight decay on norms).
PAPER_RECIPES = {
    "rt_detr": ((0.9999, 2000), (0.75, 1.25), False), "rt_detr_v2": ((0.9999, 2000), (0.75, 1.25), False),
    "d_fine": ((0.9999, 1000), (0.75, 1.25), False), "deimv2": ((0.9999, 1000), (0.75, 1.25), False),
    "rf_detr": ((0.993, 100), (0.5, 1.5), False), "lw_detr": ((0.9997, 0), (0.5, 1.5), False),
    "detr": (None, (0.6, 1.0), True), "detr_r101": (None, (0.6, 1.0), True), "deformable_detr": (None, (0.6, 1.0), True),
    "conditional_detr": (None, (0.6, 1.0), True), "dab_detr": (None, (0.6, 1.0), True), "yolos": (None, (0.6, 1.0), True),
    "yolos_small": (None, (0.6, 1.0), True), "resnet": (None, None, True), "segformer": (None, None, True),
}  # fmt: skip


def _recipe_of(cfg: DictConfig) -> tuple:
    ema = cfg.callbacks.get("ema")
    scales = cfg.multi_scale.get("scales")
    return ((ema.decay, ema.warmup_steps) if ema else None, (scales[0], scales[-1]) if scales else None, cfg.decay_norms_and_biases)


@pytest.mark.parametrize("model", sorted(PAPER_RECIPES))
def test_each_model_option_trains_with_its_papers_recipe(tmp_path: Path, model: str) -> None:
    assert _recipe_of(compose_train_config(tmp_path, tmp_path, [f"model={model}"])) == PAPER_RECIPES[model]
    # recipe=none switches every feature off; one feature can still be overridden on its own.
    assert _recipe_of(compose_train_config(tmp_path, tmp_path, [f"model={model}", "recipe=none"])) == (None, None, True)
    alone = compose_train_config(tmp_path, tmp_path, [f"model={model}", "multi_scale=none"])
    assert _recipe_of(alone) == (PAPER_RECIPES[model][0], None, PAPER_RECIPES[model][2])


def test_every_detection_option_declares_a_recipe() -> None:
    """A new detection model option must say which recipe its paper trains with (or be added to PAPER_RECIPES)."""
    detection = {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if "ForObjectDetection" in p.read_text()}
    assert detection <= set(PAPER_RECIPES), f"no expected recipe for {sorted(detection - set(PAPER_RECIPES))}"


def test_the_rbc_cells_recipe_switches_the_features_off(tmp_path: Path) -> None:
    # On the RBC cells the features lose (docs/models.md, "Training recipes"): the experiment overrides the model's recipe.
    assert _recipe_of(compose_train_config(tmp_path, tmp_path, ["+experiment=rbc_cells"])) == (None, None, True)


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
