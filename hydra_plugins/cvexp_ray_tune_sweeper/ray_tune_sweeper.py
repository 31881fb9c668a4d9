"""The Hydra ``Sweeper`` plugin class; the implementation is :class:`cvexp.tuning.RayTuneSweep`."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RayTuneSweeper(Sweeper):
    """Runs a multirun (``-m``) as a Ray Tune experiment: sampled trials, each a full job, stopped early by ASHA.

    The keyword arguments are the keys of ``hydra.sweeper`` (:class:`.config.RayTuneSweeperConf`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.impl: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from cvexp.tuning import RayTuneSweep  # Ray and Lightning load only when a sweep runs

        self.hydra_context, self.config = hydra_context, config
        self.impl = RayTuneSweep(hydra_context=hydra_context, task_function=task_function, config=config, **self.options)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)
