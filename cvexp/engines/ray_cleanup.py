"""Frees the workers' resources of a Ray Train run whose driver was killed (a Ray Tune trial stopped early).

A Ray Train run reserves its workers' CPUs/GPUs in a placement group, which Ray scopes to the *job*,
not to the process that started the run. When that process is a Ray Tune trial and ASHA stops the
trial, Ray kills the trial's actor, with it the run's controller and workers, but the placement
group stays until the whole sweep ends: the next trial's workers then wait for resources forever.

Ray 2.60 has a cleaner for this (``PlacementGroupCleaner``), which learns that the controller died
from the State API. Without the dashboard that API is unavailable, and with it the cleaner may ask a
different cluster on the same machine (it finds the cluster by auto-detection); both were seen here,
and both leave the placement group behind. The two pieces below do the same job without the State API:

- :class:`PlacementGroupReaper`, an actor the sweep starts, which holds a handle to every watched
  controller and removes the controller's placement groups once calls to it fail with "actor died";
- :class:`cvexp.engines.ray_train_callback.ReleaseWorkersWithController`, a Ray Train callback
  (``trainer.run_callbacks``) that runs in the controller and registers each worker group's
  placement group with the reaper. It lives in a module of its own because it subclasses Ray
  Train's internal callback classes: only a trial that trains with ``trainer=ray`` imports it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class PlacementGroupReaper:
    """Removes the placement groups of Ray Train controllers that have died.

    Start it from the process that outlives the runs (the sweep) so that it lives as long as their
    placement groups would; each run registers through :class:`ReleaseWorkersWithController`.

    Args:
        check_interval_s: seconds between liveness checks of the watched controllers.
    """

    def __init__(self, check_interval_s: float = 1.0) -> None:
        self.check_interval_s = check_interval_s
        self.watched: list[tuple[Any, PlacementGroup]] = []  # (controller handle, its placement group)
        self.removed: list[str] = []  # hex ids of the placement groups this reaper removed
        self.loop_task: asyncio.Task | None = None

    async def watch(self, controller: Any, placement_group: PlacementGroup) -> None:
        """Removes ``placement_group`` once ``controller`` (an actor handle) has died."""
        self.watched.append((controller, placement_group))
        if self.loop_task is None:
            self.loop_task = asyncio.get_running_loop().create_task(self._reap())

    async def watched_placement_groups(self) -> int:
        """How many placement groups still wait for their controller to end."""
        return len(self.watched)

    async def removed_placement_groups(self, settle_s: float = 0.0) -> list[str]:
        """The ids (hex) of the placement groups removed so far, oldest first.

        ``settle_s``: first wait up to that long for the watched runs to end (at the end of a sweep,
        the last stopped trial's controller may still be dying).
        """
        deadline = asyncio.get_running_loop().time() + settle_s
        while self.watched and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self.check_interval_s / 2)
        return list(self.removed)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            # The run removed its placement group itself (it ended, or restarted its workers in a new
            # one): let go of the handle, which would otherwise keep a finished controller alive.
            self.watched = [(c, pg) for c, pg in self.watched if placement_group_table(pg).get("state") not in (None, "REMOVED")]
            checked = list(self.watched)  # watch() may add entries while the checks are awaited
            alive = await asyncio.gather(*(_is_alive(controller) for controller, _ in checked))
            for (controller, placement_group), is_alive in zip(checked, alive, strict=True):
                if is_alive:
                    continue
                self.watched.remove((controller, placement_group))
                remove_placement_group(placement_group)
                self.removed.append(placement_group.id.hex())
                log.info("A Ray Train controller died without freeing its workers' resources (e.g. its trial was "
                         "stopped): removed its placement group %s.", placement_group.id.hex())  # fmt: skip


async def _is_alive(actor: Any, timeout_s: float = 30.0) -> bool:
    """False once calls to ``actor`` fail because it died; a slow answer counts as alive."""
    try:
        await asyncio.wait_for(actor.__ray_ready__.remote(), timeout_s)
    except RayActorError:
        return False
    except asyncio.TimeoutError:
        return True
    return True
