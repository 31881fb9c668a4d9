"""trainer=ray: DDP with Ray Train workers on a fresh local cluster (CPU, gloo), and recovery from a dead worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from cvexp.training import run_training

# The callbacks below travel to the Ray workers by value: workers need not import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RecordStarts(L.Callback):
    """Appends ``rank world_size global_step`` to ``path`` each time a worker starts fitting."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.path.open("a") as file:
            file.write(f"{trainer.global_rank} {trainer.world_size} {trainer.global_step}\n")

    def starts(self) -> list[tuple[int, int, int]]:
        return sorted(tuple(int(x) for x in line.split()) for line in self.path.read_text().splitlines())


class KillRankOnce(L.Callback):
    """Kills the worker process of ``rank`` after ``step`` optimizer steps, the first time only."""

    def __init__(self, rank: int, step: int, marker: Path) -> None:
        self.rank, self.step, self.marker = rank, step, marker

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            import ray.train

            # Ray registers a reported checkpoint when its controller next polls the workers; a worker
            # dying within the same second as the report (smoke epochs are that short) would lose it.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            self.marker.touch()
            os._exit(1)  # as a crashed or preempted worker: no clean-up, no exception


@pytest.fixture(autouse=True)
def no_ray_left_behind():
    yield
    import ray

    assert not ray.is_initialized(), "RayEngine must stop the local cluster it started"


def _only_run(cfg):
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    return client, run


def test_two_ray_workers_train_one_mlflow_run_with_local_metric_names(train_config, tmp_path: Path, capfd) -> None:
    starts = RecordStarts(tmp_path / "starts.txt")
    cfg = train_config(["trainer=ray", "trainer.num_workers=2", "debug=smoke"])
    summary = run_training(cfg, extra_callbacks=[starts])

    assert starts.starts() == [(0, 2, 0), (1, 2, 0)]  # two DDP ranks
    best = Path(summary.best_model_path)
    assert best.is_file() and best.is_relative_to(tmp_path / "outputs" / "ray")  # Ray Train's best checkpoint
    assert summary.optimized_value is not None
    assert {"map", "map_50", "ap/circle"} <= set(summary.val_metrics) and {"map", "map_50"} <= set(summary.test_metrics)
    # Start-up never stalls silently, and on this machine it is quick: the time is measured (and logged).
    assert summary.startup_seconds is not None and 0 < summary.startup_seconds < 90, summary.startup_seconds
    # The driver writes the run's model artifact from the best checkpoint the workers reported.
    assert summary.artifact_dir == tmp_path / "run" / "model" and (summary.artifact_dir / "model.safetensors").is_file()

    client, run = _only_run(cfg)  # one run: rank 0 logged into the driver's run
    assert run.info.run_id == summary.mlflow_run_id and run.info.status == "FINISHED"
    assert run.data.tags["trainer"] == "ray"
    assert {"train/loss_step", "train/loss_epoch", "val/map", "val/map_50", "val/ap/circle", "test/map_50"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")] == list(range(6))  # not once per worker
    assert any(item.path == "config.yaml" for item in client.list_artifacts(run.info.run_id))
    # With the dashboard, Ray Train's placement-group cleaner can ask whether the run is alive (without
    # it, it warns once a second throughout training).
    output = capfd.readouterr()
    assert "State API may be temporarily unavailable" not in output.err
    # Ray Train's controller finds its autoscaling coordinator running (cvexp starts it): no timeout traceback.
    assert "Failed to send resource request" not in output.err + output.out


@pytest.mark.long  # three Ray runs (2 min): make test-long; CI trains detection with Ray (above) and every task locally
@pytest.mark.parametrize(("task", "metric"), [("classification", "accuracy"), ("semantic_segmentation", "miou"), ("instance_segmentation", "mask_map")])
def test_two_ray_workers_train_the_other_tasks(train_config, tmp_path: Path, task: str, metric: str) -> None:
    """The same Ray Train path trains every task: two DDP ranks, one MLflow run, the task's metric, its artifact."""
    starts = RecordStarts(tmp_path / "starts.txt")
    cfg = train_config([f"task={task}", "trainer=ray", "trainer.num_workers=2", "debug=smoke"])
    summary = run_training(cfg, extra_callbacks=[starts])

    assert starts.starts() == [(0, 2, 0), (1, 2, 0)]
    assert metric in summary.val_metrics and metric in summary.test_metrics and summary.optimized_value is not None
    assert (summary.artifact_dir / "model.safetensors").is_file()
    client, run = _only_run(cfg)
    assert run.info.status == "FINISHED" and {f"val/{metric}", f"test/{metric}"} <= set(run.data.metrics)


@pytest.mark.long  # a kill drill (about a minute): make test-long
def test_a_killed_ray_worker_resumes_from_the_last_checkpoint(train_config, tmp_path: Path) -> None:
    starts = RecordStarts(tmp_path / "starts.txt")
    kill = KillRankOnce(rank=1, step=4, marker=tmp_path / "killed")  # in epoch 1, after epoch 0's checkpoint (step 3)
    cfg = train_config(["trainer=ray", "trainer.num_workers=2", "trainer.max_failures=1", "debug=smoke", "trainer.max_epochs=3",
                        "test_after_fit=false"])  # fmt: skip
    summary = run_training(cfg, extra_callbacks=[starts, kill])

    assert (tmp_path / "killed").exists()
    # First attempt from step 0; the restarted workers from the checkpoint of epoch 0, not from scratch.
    assert starts.starts() == [(0, 2, 0), (0, 2, 3), (1, 2, 0), (1, 2, 3)]
    ray_checkpoints = [torch.load(path, weights_only=True) for path in (tmp_path / "outputs" / "ray").glob("*/*/checkpoint.ckpt")]
    latest = max(ray_checkpoints, key=lambda state: state["global_step"])
    assert latest["epoch"] == 2 and latest["global_step"] == 9  # three epochs of 3 steps, completed
    assert Path(summary.best_model_path).is_file()
    assert not list((tmp_path / "run" / "checkpoints").glob("last-v*.ckpt"))  # the restart went on with the same files
    _, run = _only_run(cfg)  # the restarted workers logged into the same run
    assert run.info.status == "FINISHED" and "val/map" in run.data.metrics


def test_ray_workers_are_seeded_so_a_run_repeats(train_config, tmp_path: Path) -> None:
    """The same seed, the same losses: the workers seed themselves (augmentation, the models' random
    queries), as the driver does for local training."""
    import ray

    def losses(name: str) -> list[float]:
        cfg = train_config(["trainer=ray", "trainer.num_workers=2", "debug=smoke", "test_after_fit=false", "seed=7",
                            f"logger.experiment_name={name}"])  # fmt: skip
        run_training(cfg)
        client, run = _only_run(cfg)
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss_step"), key=lambda m: m.step)]

    ray.init(address="local", num_cpus=2)  # one cluster for both runs (RayEngine uses it)
    try:
        first, again = losses("first"), losses("again")
    finally:
        ray.shutdown()
    # Unseeded workers (the driver seeded, so the same initial weights) gave different losses here:
    # the augmentation draws from the workers' own generators.
    assert len(first) == 6 and first == again


@pytest.mark.parametrize("option", ["trainer.devices=2", "trainer.accelerator=gpu", "trainer.num_workers=0"])
def test_ray_engine_names_the_field_to_fix(train_config, option: str) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises(InstantiationException, match=option.split("=")[0]):
        instantiate(train_config(["trainer=ray", option]).trainer)


def _free_cpus(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)


def _wait_until(condition, timeout_s: float, what: str) -> float:
    """Polls ``condition`` every 0.2 s; returns the seconds it took, fails naming ``what`` after ``timeout_s``."""
    import time

    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"{what}: not after {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - start


@pytest.mark.long  # a kill drill: make test-long
def test_the_reaper_frees_the_workers_of_a_ray_train_run_whose_driver_was_killed(tmp_path: Path) -> None:
    """What a Tune trial stopped by ASHA leaves: its Ray Train run killed, the run's placement group still
    holding the workers' CPUs. Without the dashboard, Ray's own cleaner cannot see that the run died."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cvexp.engines.ray_cleanup import PlacementGroupReaper
    from cvexp.engines.ray_train_callback import ReleaseWorkersWithController

    def fit(seconds: float) -> None:
        def train_loop(config: dict) -> None:
            import time

            time.sleep(config["seconds"])

        TorchTrainer(train_loop, train_loop_config={"seconds": seconds}, scaling_config=ScalingConfig(num_workers=2),
                     run_config=RunConfig(storage_path=str(tmp_path), callbacks=[ReleaseWorkersWithController("reaper")])).fit()  # fmt: skip

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        reaper = PlacementGroupReaper.options(name="reaper").remote(check_interval_s=0.2)
        driver = ray.remote(num_cpus=0)(fit)
        # A run that ends by itself frees its workers: nothing for the reaper.
        ray.get(driver.remote(0.0))
        _wait_until(lambda: _free_cpus(ray) == 2, 10, "the CPUs of a finished run")
        _wait_until(lambda: ray.get(reaper.watched_placement_groups.remote()) == 0, 10, "the reaper lets go of a finished run")

        # The driver (a trial's actor) killed while its two workers hold both CPUs.
        trial = ray.remote(num_cpus=0)(type("Trial", (), {"fit": lambda self, seconds: fit(seconds)})).remote()
        trial.fit.remote(600.0)
        _wait_until(lambda: _free_cpus(ray) == 0, 120, "the two workers start")
        _wait_until(lambda: ray.get(reaper.watched_placement_groups.remote()) == 1, 30, "the run registers its placement group")
        ray.kill(trial)
        freed_after = _wait_until(lambda: _free_cpus(ray) == 2, 30, "the killed run's CPUs are free again")
        assert len(ray.get(reaper.removed_placement_groups.remote())) == 1
        print(f"freed {freed_after:.1f} s after the kill")
    finally:
        ray.shutdown()


class RecordValidationImages(L.Callback):
    """Appends ``rank image_id`` for every image each rank validates."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if not trainer.sanity_checking:
            with self.path.open("a") as file:
                file.writelines(f"{trainer.global_rank} {target.image_id}\n" for target in batch["targets"])


def test_distributed_validation_counts_each_image_once(train_config, tmp_path: Path) -> None:
    """5 validation images on 2 workers: one image is read twice (to even out the ranks) and counted once."""
    from cvexp.evaluation.evaluator import run_evaluation
    from tests.conftest import compose_train_config

    small = ["data.prepare.num_train=40", "data.prepare.num_val=5", "data.prepare.num_test=5", f"paths.data_dir={tmp_path}/datasets",
             "debug=smoke", "test_after_fit=false", "report=none", "logger=none", "trainer.limit_val_batches=1.0",
             # The arithmetic of cvexp.evaluate below (the classic layout, one thread as each Ray worker has): the metrics of this
             # barely trained model move by ~1e-5 with the order of floating-point sums (seen once in a busy CI run).
             "pixels.channels_last=false"]  # fmt: skip
    # A model that detects something first (60 local steps), so that an image counted twice would change the metrics.
    start = run_training(train_config([*small, "trainer.max_epochs=3", "trainer.limit_train_batches=20", f"paths.output_dir={tmp_path}/start"]))
    assert start.val_metrics["map_50"] > 0.002
    seen = RecordValidationImages(tmp_path / "validated.txt")
    cfg = train_config(["trainer=ray", "trainer.num_workers=2", "trainer.max_epochs=1", f"model.pretrained={start.artifact_dir}", "optimizer.lr=1e-7",
                        *small])  # fmt: skip
    summary = run_training(cfg, extra_callbacks=[seen])

    pairs = [tuple(map(int, line.split())) for line in (tmp_path / "validated.txt").read_text().splitlines()]
    by_rank = {rank: [image for r, image in pairs if r == rank] for rank in (0, 1)}
    assert len(by_rank[0]) == len(by_rank[1]) == 3 and len({image for _, image in pairs}) == 5  # 6 reads, 5 images
    # The same checkpoint evaluated in one process, on the whole split: the same numbers.
    single = run_evaluation(compose_train_config(tmp_path / "evaluate", tmp_path / "datasets",
                                                 [f"ckpt_path={summary.artifact_dir}", "split=val", "logger=none", "num_threads=1"],
                                                 config_name="evaluate"))  # fmt: skip
    assert single.metrics["map_50"] > 0.002
    for name in ("map", "map_50", "map_75", "mar_100", "ap/circle", "ap/square", "ap/triangle"):
        assert summary.val_metrics[name] == pytest.approx(single.metrics[name], abs=1e-6), name


def test_while_workers_wait_for_resources_the_run_says_so_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cvexp.engines.ray_startup import StartupWatch

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        waiting = placement_group([{"CPU": 2}])  # more than the cluster has: it stays pending
        with caplog.at_level(logging.INFO, logger="cvexp"), StartupWatch(None, "1 workers x {'CPU': 2}", time.time(), interval=0.5):
            time.sleep(1.8)
        remove_placement_group(waiting)
    finally:
        ray.shutdown()
    lines = [r.getMessage() for r in caplog.records if "no training step yet" in r.getMessage()]
    assert 2 <= len(lines) <= 4  # once per interval, not a stream
    assert "asked for 1 workers x {'CPU': 2}; the cluster has 1 of 1 CPUs free; its workers' resources are not free yet" in lines[0]
