"""Short real trainings: MLflow logging, checkpoints, resume, seeding (every model YAML: test_model_zoo.py)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from cvexp.training import run_training, seed_and_threads


def _client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.logger.tracking_uri)


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_training_validates_tests_and_logs_one_mlflow_run(train_config) -> None:
    # One model is enough here: tests/test_model_zoo.py trains and evaluates every model option.
    model = "detr"
    cfg = train_config([f"model={model}", "debug=smoke"])
    summary = run_training(cfg)

    assert Path(summary.best_model_path).is_file()
    for stage in (summary.val_metrics, summary.test_metrics):
        assert {"map", "map_50", "map_75", "mar_100", "ap/circle", "ap/square", "ap/triangle"} <= set(stage)
        assert all(-1.0 <= value <= 1.0 for name, value in stage.items() if name != "loss")

    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary.mlflow_run_id
    run = runs[0]
    assert run.data.params["model.model_class"].endswith("ForObjectDetection")
    assert run.data.params["seed"] == "42"
    assert run.data.tags["model"] == model
    assert {"train/loss_step", "val/map", "val/map_50", "val/ap/circle", "test/map_50"} <= set(run.data.metrics)
    artifacts = _artifact_paths(client, run.info.run_id)
    assert "config.yaml" in artifacts
    assert "plots/training_curves.png" in artifacts
    assert any(path.endswith(".ckpt") for path in artifacts), artifacts
    # The model artifact, in the run directory and in MLflow: where the weights started is a tag.
    assert {"model/cvexp.json", "model/config.json", "model/model.safetensors", "model/preprocessor_config.json"} <= set(artifacts)
    assert summary.artifact_dir == Path(cfg.paths.output_dir) / "model" and (summary.artifact_dir / "cvexp.json").is_file()
    assert run.data.tags["cvexp.weights"] == "random-init"


def test_training_resumes_from_a_checkpoint(train_config, tmp_path: Path) -> None:
    first = run_training(train_config(["debug=smoke", "trainer.max_epochs=1", "logger=none", "test_after_fit=false"]))
    last = Path(first.best_model_path).parent / "last.ckpt"
    state = torch.load(last, weights_only=True)  # plain data and tensors only: no pickled objects
    assert state["global_step"] == 3 and state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1  # the epoch, done
    assert [c["name"] for c in state["cvexp"]["metadata"]["categories"]] == ["circle", "square", "triangle"]

    resumed_cfg = train_config(["debug=smoke", "trainer.max_epochs=2", "logger=none", "test_after_fit=false", f"ckpt_path={last}",
                                f"paths.output_dir={tmp_path}/resumed"])  # fmt: skip
    resumed = run_training(resumed_cfg)
    state = torch.load(Path(resumed.best_model_path).parent / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6 and state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 2  # continued, not restarted


def test_seed_zero_is_honoured(train_config) -> None:
    seed_and_threads(train_config(["seed=0"]))
    assert torch.initial_seed() == 0
    first = torch.rand(3)
    seed_and_threads(train_config(["seed=0"]))
    assert torch.equal(first, torch.rand(3))


def test_mlflow_module_is_not_left_with_an_active_run(train_config) -> None:
    run_training(train_config(["debug=smoke", "trainer.max_epochs=1", "test_after_fit=false"]))
    assert mlflow.active_run() is None


def test_backbone_learning_rate_is_scaled(train_config) -> None:
    from cvexp.training import build_training

    module, _ = build_training(train_config(["backbone_lr_scale=0.1", "~scheduler", "optimizer.lr=0.002"]))
    # RT-DETR's recipe (no decay on norms and biases) splits each of head and backbone in two groups.
    groups = {group["name"]: group for group in module.configure_optimizers().param_groups}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert all(groups[name]["lr"] == pytest.approx(0.002) for name in ("head", "head_no_decay"))
    assert all(groups[name]["lr"] == pytest.approx(0.0002) for name in ("backbone", "backbone_no_decay"))
    assert module.backbone_modules == ("model.backbone",)  # declared by the model option
    in_backbone = {id(p) for name in ("backbone", "backbone_no_decay") for p in groups[name]["params"]}
    assert in_backbone == {id(p) for p in module.model.model.backbone.parameters()}


def test_precision_auto_is_fp32_on_cpu_and_explicit_values_pass_through() -> None:
    from cvexp.engines.local import resolve_precision

    if torch.cuda.is_available():
        assert resolve_precision("auto") in ("bf16-mixed", "16-mixed")
    else:
        assert resolve_precision("auto") == "32-true"
    assert resolve_precision("bf16-mixed") == "bf16-mixed"


def test_the_same_seed_trains_the_same_weights(train_config, tmp_path: Path) -> None:
    # Augmentation included: albumentations keeps a generator of its own that the seed must reach. A fixed
    # thread count too: the default follows the machine's load, and threads change the floating-point order.
    weights = []
    for attempt in range(2):
        cfg = train_config(["debug=smoke", "augmentation=strong", "trainer.max_epochs=1", "logger=none", "test_after_fit=false",
                            "num_threads=1", f"paths.output_dir={tmp_path}/attempt{attempt}"])  # fmt: skip
        summary = run_training(cfg)
        weights.append(torch.load(Path(summary.best_model_path).parent / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
