"""The Ray Train callback that registers a run's placement groups with the sweep's reaper (:mod:`cvexp.engines.ray_cleanup`).

It subclasses Ray Train's controller callbacks, which Ray keeps in an internal module
(``ray.train.v2._internal.execution.callback``, the extension point Ray's own cleaner uses). That
module can move between Ray releases, so only this module imports it, and only a Ray Tune trial
that trains with ``trainer=ray`` imports this module (by its ``_target_``): everything else in
cvexp works whatever the Ray version.
"""

from __future__ import annotations

from typing import Any

import ray

TESTED_RAY = "2.60.0"

try:
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
except ImportError as error:  # pragma: no cover - depends on the installed Ray
    raise ImportError(
        f"sweeper=asha_ray_train (Ray Train runs inside Ray Tune trials) needs Ray Train V2's controller callbacks "
        f"(ray.train.v2._internal.execution.callback), which this Ray ({ray.__version__}) does not have; cvexp was tested "
        f"with Ray {TESTED_RAY}. Fix: pip install 'ray[tune,train]>=2.50,<2.61', or sweep with trainer=local trials."
    ) from error


class ReleaseWorkersWithController(ControllerCallback, WorkerGroupCallback):
    """Ray Train callback: registers the run's placement groups with a :class:`PlacementGroupReaper`.

    Put it in ``trainer.run_callbacks`` (the sweep does, for trials with ``trainer=ray``). Ray Train
    calls it in the run's controller; it is one of Ray Train's controller callbacks, the extension
    point Ray keeps for such workarounds (``ray.train.v2._internal.execution.callback``).

    Args:
        reaper: the name of the :class:`PlacementGroupReaper` actor (in the job's namespace).
    """

    def __init__(self, reaper: str) -> None:
        self.reaper = reaper
        self.controller: Any = None

    def after_controller_start(self, train_run_context: Any) -> None:
        self.controller = ray.get_runtime_context().current_actor

    def after_worker_group_start(self, worker_group: Any) -> None:
        placement_group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        ray.get(ray.get_actor(self.reaper).watch.remote(self.controller, placement_group))
