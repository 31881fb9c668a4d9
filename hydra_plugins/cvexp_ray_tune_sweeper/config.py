"""The sweeper's config node, ``hydra/sweeper: ray_tune`` (completed by ``conf/sweeper/asha.yaml`` and ``optuna_asha.yaml``)."""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types, and Hydra's plugin
# scan imports this module in a way that leaves string annotations unresolvable.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class RayTuneSweeperConf:
    """Every key of ``hydra.sweeper`` (see docs/distributed.md, "Ray Tune sweeps")."""

    _target_: str = "hydra_plugins.cvexp_ray_tune_sweeper.ray_tune_sweeper.RayTuneSweeper"
    # Override key -> distribution, e.g. {optimizer.lr: {type: loguniform, lower: 1e-4, upper: 3e-3}}.
    # Types: choice (values), grid (values), uniform / loguniform (lower, upper), quniform (lower, upper, q),
    # randint (lower, upper: exclusive). Command-line sweeps (`a=1,2`, `a=interval(0,1)`) are added to it.
    search_space: dict[str, Any] = field(default_factory=dict)
    # Trials to run (with `grid` entries: repeats of the whole grid, as in Ray Tune).
    num_samples: int = 4
    # What ASHA and the search optimise, reported by each trial after every validation.
    metric: str = "${optimized_metric}"
    # max or min; follows the ranking table's mode unless set.
    mode: str = "${oc.select:hydra.callbacks.sweep_summary.mode,max}"
    # null: random sampling (Ray Tune's BasicVariantGenerator, which also expands `grid`); optuna: TPE (OptunaSearch).
    search_alg: str | None = None
    # Seed of the search algorithm's sampling (the trainings keep `seed`).
    search_seed: int | None = 0
    # type: asha (AsyncHyperBand, stops weak trials at rungs grace_period * reduction_factor^k epochs) or fifo (none).
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": "${trainer.max_epochs}"}
    )
    max_concurrent_trials: int = 2
    # Ray resources each trial reserves; a trial sets its torch threads to `cpu` unless `num_threads` is set.
    resources_per_trial: dict[str, float] = field(default_factory=lambda: {"cpu": 1})
    # ray.init arguments. local: a fresh local cluster, stopped at the end; auto: the cluster this machine is part of.
    # include_dashboard null: Ray's choice (started when installed); Ray Train's clean-up of stopped runs asks it.
    init: dict[str, Any] = field(default_factory=lambda: {"address": "local", "num_cpus": None, "include_dashboard": None})
    # Where Ray Tune writes its experiment state (null: <sweep dir>/tune).
    storage_path: str | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="ray_tune", node=RayTuneSweeperConf, provider="cvexp")
