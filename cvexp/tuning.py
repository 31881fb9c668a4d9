"""Ray Tune sweeps (``python -m cvexp.train -m sweeper=asha``): sampled trials, weak ones stopped early.

The Hydra sweeper plugin (``hydra_plugins/cvexp_ray_tune_sweeper``, ``hydra/sweeper=ray_tune``)
hands the multirun to :class:`RayTuneSweep`:

- the search space comes from ``hydra.sweeper.search_space`` (override key -> distribution) and
  from command-line sweeps (``model=detr,yolos``, ``optimizer.lr=tag(log,interval(1e-4,1e-2))``);
- each trial is a Ray Tune function trainable that composes the job's config with its overrides
  (Hydra's config loader, as a launcher does) and runs it as a Hydra job (:func:`run_trial`): its own
  run directory ``<sweep dir>/<job number>``, its own MLflow run under the sweep's parent run
  (:mod:`cvexp.sweeps` tags it), and :class:`TuneReportCallback` reporting the validation metrics after
  every validated epoch, from which ASHA stops weak trials;
- at the end, the trials the scheduler stopped get their ``job_result.json`` completed and their
  MLflow run marked ``KILLED``; the best trial's overrides are written to
  ``<sweep dir>/best_experiment.yaml`` (a ``+experiment=`` preset), and the ranking table is
  :class:`cvexp.sweeps.SweepSummary`'s, as for every sweep.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import ray
from omegaconf import DictConfig, OmegaConf, open_dict
from ray import tune
from ray.tune.integration import ray_train as ray_train_integration

from cvexp.engines.ray_cleanup import PlacementGroupReaper
from cvexp.sweeps import JOB_RESULT_FILE, mlflow_store, set_hydra_config, write_job_result
from cvexp.tracking.mlflow import SWEEP_JOB_TAG, SWEEP_TAG, parent_run_id

log = logging.getLogger(__name__)

BEST_EXPERIMENT_FILE = "best_experiment.yaml"
# What trials report as their progress: finished epochs, so that ASHA's grace_period, rungs and
# max_t are epochs whatever trainer.check_val_every_n_epoch is.
EPOCH_KEY = "epoch"
STOPPED = "STOPPED"  # job_result.json status of a trial the scheduler ended early


class TuneReportCallback(L.Callback):
    """Reports ``val/*`` metrics and the epoch count to Ray Tune after each validation of a trial.

    Added to the ``callbacks`` of every trial that trains in-process (:func:`add_tune_reporting`).
    When the scheduler stops the trial, Ray ends it inside this report: the training does not come back.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
        tune.report({**metrics, EPOCH_KEY: trainer.current_epoch + 1})


class TrainReportToTune(ray_train_integration.TuneReportCallback):
    """Passes a ``trainer=ray`` trial's reports from its Ray Train workers on to Ray Tune.

    A Ray Train run callback (``trainer.run_callbacks``, added by :func:`add_tune_reporting`), made in
    the trial. Rank 0's report after each validated epoch (the engine's ``RayTrainReportCallback``)
    counts epochs from 0; Tune gets :data:`EPOCH_KEY` as finished epochs, as from in-process trials,
    so ASHA's rungs mean the same with either trainer.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        finished = [{**worker_metrics, EPOCH_KEY: worker_metrics["epoch"] + 1} for worker_metrics in metrics]
        super().after_report(run_context, finished, checkpoint)


# --- the search space ----------------------------------------------------------------------------

_DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "choice": (("values",), lambda s: tune.choice(list(s["values"]))),
    "grid": (("values",), lambda s: tune.grid_search(list(s["values"]))),
    "uniform": (("lower", "upper"), lambda s: tune.uniform(s["lower"], s["upper"])),
    "loguniform": (("lower", "upper"), lambda s: tune.loguniform(s["lower"], s["upper"])),
    "quniform": (("lower", "upper", "q"), lambda s: tune.quniform(s["lower"], s["upper"], s["q"])),
    "randint": (("lower", "upper"), lambda s: tune.randint(s["lower"], s["upper"])),
}


def build_search_space(search_space: dict[str, Any]) -> dict[str, Any]:
    """``{override key: {type: ..., ...}}`` (``hydra.sweeper.search_space``) -> Ray Tune's param space."""
    space = {}
    for key, spec in search_space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in _DISTRIBUTIONS:
            raise ValueError(
                f"hydra.sweeper.search_space.{key}: expected {{type: {'|'.join(_DISTRIBUTIONS)}, ...}}, got {spec!r}."
            )
        needed, build = _DISTRIBUTIONS[kind]
        missing = [name for name in needed if name not in spec]
        if missing:
            raise ValueError(
                f"hydra.sweeper.search_space.{key}: type {kind} needs {', '.join(needed)}; {', '.join(missing)} missing."
            )
        space[key] = build(spec)
    return space


def split_arguments(arguments: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Command-line overrides -> (the fixed ones, the sweeps as search-space entries).

    ``a=1,2`` / ``a=choice(1,2)`` / ``a=range(1,4)`` become ``choice``; ``a=interval(0,1)`` ``uniform``,
    or ``loguniform`` with ``tag(log, interval(...))``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    fixed: list[str] = []
    space: dict[str, dict[str, Any]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        key, value = override.get_key_element(), override.value()
        if isinstance(value, IntervalSweep):
            space[key] = {"type": "loguniform" if "log" in value.tags else "uniform", "lower": value.start, "upper": value.end}
        else:
            space[key] = {"type": "choice", "values": list(override.sweep_iterator())}
    return fixed, space


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars from Tune's samplers


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's sampled values as Hydra overrides (``optimizer.lr=0.00042``, ``model=detr``)."""
    values = {key: _plain(value) for key, value in params.items()}
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()]


# --- one trial (runs in a Ray worker) ------------------------------------------------------------


@dataclass
class TrialSpec:
    """What every trial needs from the sweeping process (pickled to the Ray workers once)."""

    hydra_context: Any
    task_function: Any
    config: DictConfig  # the sweep's config: composing from it keeps its ${now:} timestamps
    fixed_overrides: list[str]
    singleton_state: Any
    job_numbers: Any  # a JobNumbers actor
    reaper: str  # the name of the sweep's PlacementGroupReaper actor
    num_threads: int = 1


@ray.remote(num_cpus=0)
class JobNumbers:
    """Hands out Hydra job numbers 0, 1, 2, ... in the order trials start (Tune's trial ids are
    random with a search algorithm); a restarted trial keeps its number."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def number(self, trial_id: str) -> int:
        return self.numbers.setdefault(trial_id, len(self.numbers))

    def all(self) -> dict[str, int]:
        return self.numbers


def runs_ray_train(config: DictConfig) -> bool:
    """Whether the config trains with Ray Train workers (``trainer=ray``) rather than in-process."""
    return str(OmegaConf.select(config, "trainer._target_", default="")).endswith("RayEngine")


def add_tune_reporting(config: DictConfig) -> None:
    """Makes the trial's training report its validation metrics to Tune after every validated epoch.

    In-process training reports from a Lightning callback (:class:`TuneReportCallback`); with
    ``trainer=ray`` the metrics are computed in the Ray Train workers, whose reports the run's driver
    passes on to Tune (:class:`TrainReportToTune`).
    """
    if runs_ray_train(config):
        _add_run_callback(config, {"_target_": f"{__name__}.TrainReportToTune"})
        return
    with open_dict(config):
        if config.get("callbacks") is None:
            config.callbacks = {}
        config.callbacks.tune_report = {"_target_": f"{__name__}.TuneReportCallback"}


def release_workers_when_stopped(config: DictConfig, reaper: str) -> None:
    """With ``trainer=ray``, has the sweep's :class:`~cvexp.engines.ray_cleanup.PlacementGroupReaper`
    free the trial's Ray Train workers' resources when the scheduler stops the trial.

    Stopping a trial kills its Ray Train run; the run's placement group would otherwise hold the
    workers' CPUs until the sweep ends, and the next trial would wait for them forever.
    """
    if runs_ray_train(config):
        # By name: the class subclasses Ray-internal callbacks, imported only in a trial that uses it.
        _add_run_callback(config, {"_target_": "cvexp.engines.ray_train_callback.ReleaseWorkersWithController", "reaper": reaper})


def _add_run_callback(config: DictConfig, callback: dict[str, Any]) -> None:
    """Appends a Ray Train run callback (a ``_target_`` node) to ``trainer.run_callbacks``."""
    with open_dict(config):
        config.trainer.run_callbacks = [*(config.trainer.get("run_callbacks") or []), callback]


def trial_resource_request(resources_per_trial: dict[str, Any]) -> dict[str, Any]:
    """``hydra.sweeper.resources_per_trial`` as Tune takes it.

    Tune refuses a trial that reserves nothing, but a trial that trains with Ray Train (``cpu: 0``)
    only waits for its workers: one byte of memory is the smallest reservation that takes no CPU
    from them.
    """
    if any(float(value) for value in resources_per_trial.values()):
        return resources_per_trial
    return {**resources_per_trial, "memory": 1}


def check_trial_fits(config: DictConfig, resources_per_trial: dict[str, Any], cluster_cpus: float | None) -> None:
    """Refuses a ``trainer=ray`` sweep whose trial (its own CPUs plus its workers') cannot fit the cluster.

    Tune would start the trial, and Ray Train would wait forever for the workers' resources.
    """
    if not runs_ray_train(config) or cluster_cpus is None:
        return
    workers = int(OmegaConf.select(config, "trainer.num_workers", default=1))
    per_worker = float(OmegaConf.select(config, "trainer.cpus_per_worker", default=1))
    needed = float(resources_per_trial.get("cpu", 1)) + workers * per_worker
    if needed > cluster_cpus:
        raise ValueError(
            f"hydra.sweeper.resources_per_trial.cpu={resources_per_trial.get('cpu', 1)} plus trainer.num_workers={workers} x "
            f"trainer.cpus_per_worker={per_worker} needs {needed:g} CPUs per trial, and the Ray cluster has {cluster_cpus:g}: "
            "the trial's workers would wait forever. A trial that trains with Ray Train only waits for its workers: set "
            "hydra.sweeper.resources_per_trial.cpu=0 (sweeper=asha_ray_train does), or fewer workers."
        )


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """The Ray Tune trainable: one Hydra job with the trial's overrides, reporting to Tune as it trains."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    setup_globals()
    Singleton.set_state(spec.singleton_state)  # the config store, with the plugin's configs, as in the sweeping process
    trial_id = tune.get_context().get_trial_id()
    job = ray.get(spec.job_numbers.number.remote(trial_id))
    overrides = [*spec.fixed_overrides, *trial_overrides(params)]
    config = spec.hydra_context.config_loader.load_sweep_config(spec.config, overrides)
    with open_dict(config):
        config.hydra.job.id = trial_id
        config.hydra.job.num = job
        if config.get("num_threads") is None:
            config.num_threads = spec.num_threads  # torch would take every core of the machine
    add_tune_reporting(config)
    release_workers_when_stopped(config, spec.reaper)
    HydraConfig.instance().set_config(config)
    # A trial the scheduler stops never reaches Hydra's on_job_end, which writes the finished record:
    # the sweeping process completes this one afterwards.
    write_job_result(Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)), job, overrides, "RUNNING", None)
    result = run_job(hydra_context=spec.hydra_context, task_function=spec.task_function, config=config,
                     job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
    _ = result.return_value  # re-raises the job's exception, so that Tune marks the trial as failed


# --- the sweep (runs in the sweeping process) ----------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as the sweeping process saw it: its sampled values and every report."""

    trial_id: str
    params: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    error: bool = False
    job: int = -1  # the Hydra job number; -1: the trial never started its job

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.reports if isinstance(r.get(metric), int | float) and not math.isnan(r[metric])]

    def best(self, metric: str, mode: str) -> float | None:
        values = self.values(metric)
        return (max if mode == "max" else min)(values) if values else None


class _TrialLog(tune.Callback):
    """Keeps every trial's sampled values and reports (Tune callback, in the sweeping process)."""

    def __init__(self) -> None:
        self.trials: dict[str, TrialRecord] = {}

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.trials:
            self.trials[trial.trial_id] = TrialRecord(trial.trial_id, {k: _plain(v) for k, v in trial.config.items()})
        return self.trials[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._record(trial).reports.append(dict(result))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial).error = True


class RayTuneSweep:
    """A multirun as one Ray Tune experiment; the arguments are the keys of ``hydra.sweeper``
    (``hydra_plugins/cvexp_ray_tune_sweeper/config.py`` documents them)."""

    def __init__(self, *, hydra_context: Any, task_function: Any, config: DictConfig, search_space: Any = None,
                 num_samples: int = 4, metric: str = "val/map", mode: str = "max", search_alg: str | None = None,
                 search_seed: int | None = 0, scheduler: Any = None, max_concurrent_trials: int = 2,
                 resources_per_trial: Any = None, init: Any = None, storage_path: str | None = None) -> None:  # fmt: skip
        def container(node: Any) -> dict[str, Any]:
            return dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node or {})

        if mode not in ("max", "min"):
            raise ValueError(f"hydra.sweeper.mode={mode!r}: use max or min.")
        if search_alg not in (None, "optuna"):
            raise ValueError(f"hydra.sweeper.search_alg={search_alg!r}: use null (random/grid sampling) or optuna.")
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.search_space = container(search_space)
        self.num_samples, self.metric, self.mode = int(num_samples), str(metric), mode
        self.search_alg, self.search_seed = search_alg, search_seed
        self.scheduler = container(scheduler) or {"type": "fifo"}
        self.max_concurrent_trials = int(max_concurrent_trials)
        self.resources_per_trial = container(resources_per_trial) or {"cpu": 1}
        self.init = container(init)
        self.storage_path = storage_path

    def sweep(self, arguments: list[str]) -> list[TrialRecord]:
        """Runs the trials, completes the records of stopped ones, writes ``best_experiment.yaml``."""
        from hydra.core.singleton import Singleton

        set_hydra_config(self.config)  # paths resolve through ${hydra:runtime.cwd}
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fixed, command_line_space = split_arguments(arguments)
        space_spec = {**self.search_space, **command_line_space}
        if not space_spec:
            raise ValueError("hydra.sweeper.search_space is empty: declare it (e.g. in an experiment YAML, see "
                             "docs/distributed.md), as '++hydra.sweeper.search_space={optimizer.lr: {type: loguniform, lower: 1e-4, upper: 3e-3}}', "
                             "or sweep on the command line ('optimizer.lr=tag(log,interval(1e-4,3e-3))').")  # fmt: skip
        param_space = build_search_space(space_spec)
        self._prepare_data()
        # Trials keep this process's working directory (Tune would move them into its trial folders),
        # so relative paths in a config mean the same as in a plain run. Tune passes the variable on.
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        trial_log = _TrialLog()
        log.info("Ray Tune sweep: %d trials, %s, at most %d at once, %s each; output in %s", self.num_samples,
                 self.scheduler.get("type"), self.max_concurrent_trials, self.resources_per_trial, sweep_dir)  # fmt: skip
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(**self.init)
        try:
            check_trial_fits(self.config, self.resources_per_trial, ray.cluster_resources().get("CPU"))
            job_numbers = JobNumbers.remote()
            reaper_name = f"cvexp-placement-group-reaper-{uuid.uuid4().hex[:8]}"
            reaper = PlacementGroupReaper.options(name=reaper_name).remote()  # lives while this handle does
            spec = TrialSpec(self.hydra_context, self.task_function, self.config, fixed, Singleton.get_state(), job_numbers,
                             reaper_name, num_threads=max(1, int(self.resources_per_trial.get("cpu", 1))))  # fmt: skip
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(run_trial, spec=spec), trial_resource_request(self.resources_per_trial)),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=self.metric,
                    mode=self.mode,
                    num_samples=self.num_samples,
                    max_concurrent_trials=self.max_concurrent_trials,
                    scheduler=self._scheduler(),
                    search_alg=self._search_alg(param_space),
                ),  # fmt: skip
                run_config=tune.RunConfig(
                    name="tune", storage_path=str(self.storage_path or sweep_dir), callbacks=[trial_log], verbose=1
                ),
            )
            tuner.fit()
            freed = ray.get(reaper.removed_placement_groups.remote(settle_s=10.0))
            if freed:
                log.info("Freed the Ray Train workers' resources of %d stopped trial(s).", len(freed))
            for trial_id, job in ray.get(job_numbers.all.remote()).items():
                if trial_id in trial_log.trials:
                    trial_log.trials[trial_id].job = job
        finally:
            if started_here:
                ray.shutdown()  # also ends the processes of stopped trials before their runs are closed below
        trials = sorted(trial_log.trials.values(), key=lambda trial: trial.job)
        self._complete_records(trials, sweep_dir)
        best = self._best(trials)
        if best is not None:
            path = write_best_experiment(sweep_dir / BEST_EXPERIMENT_FILE, best, self, fixed)
            print(f"best trial: job {best.job}, {self.metric} = {best.best(self.metric, self.mode):.4f}; its config: {path}")
        return trials

    def _scheduler(self) -> Any:
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        options = dict(self.scheduler)
        kind = options.pop("type", "asha")
        if kind == "fifo":
            return FIFOScheduler()
        if kind != "asha":
            raise ValueError(f"hydra.sweeper.scheduler.type={kind!r}: use asha or fifo.")
        # stop_last_trials=False: a trial that reaches max_t ends by itself (its test, its Hydra job end)
        # instead of being cut off after its last report.
        return ASHAScheduler(time_attr=EPOCH_KEY, stop_last_trials=False, **options)

    def _search_alg(self, param_space: dict[str, Any]) -> Any:
        if self.search_alg is None:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            # Tune applies max_concurrent_trials only to searchers it builds or wraps; this one takes it itself.
            return BasicVariantGenerator(random_state=self.search_seed, max_concurrent=self.max_concurrent_trials)
        grids = [key for key, value in param_space.items() if isinstance(value, dict) and "grid_search" in value]
        if grids:
            raise ValueError(f"hydra.sweeper.search_space: {', '.join(grids)} is a grid, which search_alg=optuna cannot "
                             "sample; use type: choice.")  # fmt: skip
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=self.search_seed)

    def _prepare_data(self) -> None:
        # Lightning's prepare_data runs once per machine: here, before the trials, rather than in
        # trials that would write the same generated dataset at the same time.
        from cvexp.errors import instantiate

        if self.config.get("data") is not None:
            instantiate(self.config.data).prepare_data()

    def _best(self, trials: list[TrialRecord]) -> TrialRecord | None:
        scored = [trial for trial in trials if trial.best(self.metric, self.mode) is not None]
        sign = 1.0 if self.mode == "max" else -1.0
        return max(scored, key=lambda trial: sign * trial.best(self.metric, self.mode), default=None)

    def _complete_records(self, trials: list[TrialRecord], sweep_dir: Path) -> None:
        """Gives trials that never finished their job a result and closes their MLflow runs."""
        by_job = {trial.job: trial for trial in trials if trial.job >= 0}
        ended: dict[int, str] = {}  # job -> the MLflow status its run gets
        for path in sweep_dir.glob(f"*/{JOB_RESULT_FILE}"):
            record = json.loads(path.read_text())
            trial = by_job.get(record["job"])
            # With trainer=ray the scheduler's stop ends the trial's Ray Train run under its job, which
            # then ends as FAILED; Tune saw no error in such a trial.
            stopped_under_ray_train = record["status"] == "FAILED" and trial is not None and not trial.error
            if trial is None or (record["status"] != "RUNNING" and not stopped_under_ray_train):
                continue  # finished: Hydra's on_job_end wrote it
            status = "FAILED" if trial.error else STOPPED
            write_job_result(path.parent, record["job"], record["overrides"], status, trial.best(self.metric, self.mode))
            ended[record["job"]] = "FAILED" if trial.error else "KILLED"
        store = mlflow_store(self.config)
        if store is None or not ended:
            return
        client, experiment_id = store
        for run in client.search_runs(
            [experiment_id], filter_string=f"tags.{SWEEP_TAG} = '{sweep_dir}' and tags.sweep_role = 'job'"
        ):
            status = ended.get(int(run.data.tags.get(SWEEP_JOB_TAG, -1)))
            if status and run.info.status != "FINISHED":
                client.set_terminated(run.info.run_id, status)

    def group_options(self, key: str) -> list[str]:
        """The options of config group ``key`` (``model`` -> detr, yolos, ...); empty for a plain key."""
        try:
            return self.hydra_context.config_loader.get_group_options(key.replace(".", "/"))
        except Exception:  # noqa: BLE001 - not a group
            return []

    def log_best_experiment(self, path: Path) -> None:
        """Attaches the best config to the sweep's MLflow parent run (when it logs to MLflow)."""
        store = mlflow_store(self.config)
        if store is None:
            return
        client, experiment_id = store
        parent = parent_run_id(client, experiment_id, str(self.config.hydra.sweep.dir))
        if parent:
            client.log_artifact(parent, str(path))


def write_best_experiment(path: Path, best: TrialRecord, sweep: RayTuneSweep, fixed: list[str]) -> Path:
    """Writes the best trial's values as a ``+experiment=`` preset (``# @package _global_``)."""
    defaults: list[dict[str, Any]] = []
    body = OmegaConf.create()
    for key, value in best.params.items():
        name = key.lstrip("+~")
        if sweep.group_options(name):
            defaults.append({f"override /{name.replace('.', '/')}": value})
        else:
            OmegaConf.update(body, name, value, force_add=True)
    content = ({"defaults": defaults} if defaults else {}) | OmegaConf.to_container(body)
    value = best.best(sweep.metric, sweep.mode)
    others = [override for override in fixed if not override.startswith("sweeper=")]  # the sweep's other overrides
    header = [
        "# @package _global_",
        f"# Best trial (job {best.job}) of the Ray Tune sweep {path.parent}: {sweep.metric} = {value:.4f} ({sweep.mode}).",
        f"# Use it: copy it to experiments/<name>.yaml, then python -m cvexp.train +experiment=<name> {' '.join(others)}".rstrip(),
    ]
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(content)))
    sweep.log_best_experiment(path)
    return path
