"""Tasks: what detection, classification and segmentation each score, report, serve and monitor (:mod:`cvexp.tasks.base`).

The ``task`` config group (conf/task/) picks one and its defaults; the model artifact records its
name, by which :func:`task_named` finds it again. A package adds a task through the ``cvexp.tasks``
entry point group, like adapters.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from cvexp.tasks.base import EvaluationReport, PredictionFeatures, Task
from cvexp.tasks.classification import ClassificationTask
from cvexp.tasks.detection import DetectionTask
from cvexp.tasks.instance_segmentation import InstanceSegmentationTask
from cvexp.tasks.semantic_segmentation import SemanticSegmentationTask

ENTRY_POINT_GROUP = "cvexp.tasks"
_TASKS: dict[str, type[Task]] = {task.name: task for task in (DetectionTask, ClassificationTask, SemanticSegmentationTask, InstanceSegmentationTask)}


def register_task(task_class: type[Task]) -> None:
    """Makes ``task_class`` findable by its ``name``."""
    _TASKS[task_class.name] = task_class


def task_named(name: str) -> Task:
    """The task recorded as ``name`` (in a model artifact, or ``task.name`` of a config)."""
    if name not in _TASKS:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name == name:
                register_task(entry_point.load())
    if name not in _TASKS:
        raise KeyError(f"task '{name}' is unknown; known tasks: {sorted(_TASKS)} (conf/task/). Another package adds one "
                       f"under the '{ENTRY_POINT_GROUP}' entry point group.")  # fmt: skip
    return _TASKS[name]()


__all__ = ["ClassificationTask", "DetectionTask", "InstanceSegmentationTask", "SemanticSegmentationTask", "EvaluationReport", "PredictionFeatures", "Task", "register_task", "task_named"]
