"""Every task runs through one pipeline: one LightningModule, one predictor, no branch on a task's name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cvexp.tasks import Task, task_named

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(path.stem for path in (ROOT / "conf" / "task").glob("*.yaml"))
# A comparison with a task's name, or a test of membership in one, anywhere in the package.
_NAMES = "|".join(TASKS)
_BRANCH = re.compile(rf"""(==|!=|\bin\b|\bis\b)\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=|\bin\b)""")


def test_every_task_option_is_a_registered_task_with_its_own_metric_and_defaults() -> None:
    assert {"detection", "classification", "semantic_segmentation"} <= set(TASKS)
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        for name in TASKS:
            cfg = compose("train", overrides=[f"task={name}"])
            task = task_named(name)
            assert isinstance(task, Task) and task.name == name
            assert cfg.task._target_.endswith(type(task).__name__)
            # the task picks the metric that checkpoints and sweeps follow: one of its own headline metrics
            assert cfg.optimized_metric.removeprefix("val/") in task.headline


def test_no_python_branches_on_a_task_name() -> None:
    offending = []
    for path in sorted((ROOT / "cvexp").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if _BRANCH.search(code):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "branches on a task name (let the task or its adapter declare what differs):\n" + "\n".join(offending)


def test_the_branch_check_catches_a_branch() -> None:
    # The check above would pass vacuously if its pattern never matched: it must catch these.
    for line in ('if task == "classification":', "if cfg.task.name != 'detection':", 'if "semantic_segmentation" in names:'):
        assert _BRANCH.search(line), line
    assert not _BRANCH.search('name = "classification"')


def test_one_lightning_module_class_serves_every_task() -> None:
    modules = []
    for path in sorted((ROOT / "cvexp").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("LightningModule") for base in node.bases):
                modules.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert modules == ["cvexp/models/task_module.py:VisionTaskModule"]


def test_an_unknown_task_name_says_which_exist() -> None:
    with pytest.raises(KeyError, match="known tasks: .*classification.*detection"):
        task_named("depth_estimation")
