"""Starting from pretrained weights (``model.pretrained``): it loads, or the run stops saying why; it never falls back.

The hub is off in tests: the pretrained models are model artifacts trained here (``save_pretrained``
files, the same thing a hub checkpoint is), which is also how users fine-tune their own models.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from cvexp.data import Category, LabelMap
from cvexp.errors import PretrainedWeightsError, instantiate
from cvexp.models.pretrained import RANDOM_INIT, class_dependent_keys, load_pretrained, weights_sha256
from cvexp.paths import CONFIG_DIR
from cvexp.training import run_training
from tests.conftest import RBC_CELLS, compose_train_config, needs_rbc

SHAPES = LabelMap([Category(1, "circle"), Category(2, "square"), Category(3, "triangle")])
QUIET = ["debug=smoke", "trainer.max_epochs=1", "report=none", "test_after_fit=false"]


def _train_artifact(root: Path, data_dir: Path, model: str) -> Path:
    cfg = compose_train_config(root, data_dir, [f"model={model}", *QUIET, "logger=none"])
    return run_training(cfg).artifact_dir


@pytest.fixture(scope="module")
def rt_detr_artifact(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """The default model after a smoke training on the shapes: a local pretrained model."""
    return _train_artifact(tmp_path_factory.mktemp("rt_detr_source"), shared_data_dir, "rt_detr")


@pytest.fixture(scope="module")
def detr_artifact(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    return _train_artifact(tmp_path_factory.mktemp("detr_source"), shared_data_dir, "detr")


def _model_cfg(tmp_path: Path, *overrides: str):
    return compose_train_config(tmp_path, tmp_path, list(overrides)).model


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


class RecordTrainMode(L.Callback):
    """Records, at the first training step, which modules of the model are in train mode."""

    def __init__(self) -> None:
        self.modes: dict[str, bool] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self.modes:
            self.modes = {name: module.training for name, module in pl_module.model.named_modules()}


# --- What cannot be loaded stops the run, naming model.pretrained, the reason and the fix ---


def test_a_pretrained_name_that_cannot_be_found_stops_the_run_before_training(tmp_path: Path, shared_data_dir: Path) -> None:
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cvexp.train", "debug=smoke", f"paths.data_dir={shared_data_dir}", "model.pretrained=no-such/model"]
    result = subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=300)

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]  # the log's last line (library warnings go to stderr)
    assert "model.pretrained=no-such/model" in last_line and "HF_HUB_OFFLINE=1" in last_line, last_line
    assert "Traceback" not in output  # a named error, not a stack trace
    (run_dir,) = (tmp_path / "outputs" / "runs" / "train").iterdir()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "model").exists()  # nothing trained
    # No MLflow run was left FINISHED as if the pretrained weights had been used (the run never started).
    store = tmp_path / "outputs" / "mlflow" / "mlflow.db"
    if store.exists():
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs where status = 'FINISHED'").fetchone() == (0,)


@pytest.mark.parametrize(("pretrained", "reason"), [
    ("no-such/model", "the Hugging Face hub is off"),
    ("/no/such/directory", "no such directory"),
    ("./relative/missing", "no such directory"),
])  # fmt: skip
def test_an_unreachable_checkpoint_names_the_reason_and_the_fix(tmp_path: Path, pretrained: str, reason: str) -> None:
    with pytest.raises(PretrainedWeightsError, match=reason) as error:
        instantiate(_model_cfg(tmp_path, f"model.pretrained={pretrained}"), label_map=SHAPES)
    assert f"model.pretrained={pretrained}" in str(error.value) and "Fix:" in str(error.value)


def test_a_directory_that_is_not_a_saved_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedWeightsError, match="has no config.json"):
        instantiate(_model_cfg(tmp_path, f"model.pretrained={tmp_path / 'empty'}"), label_map=SHAPES)


def test_a_checkpoint_that_needs_timm_names_the_package(tmp_path: Path, detr_artifact: Path) -> None:
    # The DETR ResNet checkpoints on the hub build a timm backbone (use_timm_backbone=true).
    needs_timm = tmp_path / "detr_timm"
    shutil.copytree(detr_artifact, needs_timm)
    config = json.loads((needs_timm / "config.json").read_text())
    config.pop("backbone_config")
    config["use_timm_backbone"] = True
    (needs_timm / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedWeightsError, match=r"needs the Python package 'timm', which is not installed") as error:
        instantiate(_model_cfg(tmp_path, "model=detr", f"model.pretrained={needs_timm}"), label_map=SHAPES)
    assert f"model.pretrained={needs_timm}" in str(error.value)
    # The same from a config: the model cannot be built, and the error says which field and package.
    with pytest.raises(PretrainedWeightsError, match=r"model.config needs the Python package 'timm'"):
        instantiate(_model_cfg(tmp_path, "model=detr", "model.config.backbone_config=null", "+model.config.use_timm_backbone=true"),
                    label_map=SHAPES)  # fmt: skip


def test_another_architecture_stops_unless_a_partial_load_is_allowed(train_config, detr_artifact: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    with pytest.raises(PretrainedWeightsError, match=r"holds another architecture: a 'detr' model .* builds YolosForObjectDetection") as error:
        run_training(train_config(["model=yolos", f"model.pretrained={detr_artifact}", *QUIET]))
    assert "model.allow_partial_load=true" in str(error.value)

    modes = RecordTrainMode()
    with caplog.at_level(logging.INFO, logger="cvexp"):
        summary = run_training(train_config(["model=yolos", f"model.pretrained={detr_artifact}", "model.allow_partial_load=true", *QUIET]),
                               extra_callbacks=[modes])  # fmt: skip
    assert summary.artifact_dir is not None and (summary.artifact_dir / "model.safetensors").is_file()
    assert modes.modes and all(modes.modes.values())  # every module trains
    assert "model.allow_partial_load=true: re-initialised" in caplog.text
    assert "missing from the checkpoint (vit.embeddings" in caplog.text  # names what kept its random start


def test_a_checkpoint_with_tensors_missing_stops_unless_a_partial_load_is_allowed(tmp_path: Path, rt_detr_artifact: Path) -> None:
    from transformers import RTDetrForObjectDetection

    damaged = tmp_path / "damaged"
    shutil.copytree(rt_detr_artifact, damaged)
    tensors = _tensors(damaged)  # as saved: transformers may name them otherwise in the file than in the model
    dropped = sorted(name for name in tensors if ".decoder.layers.0.fc1." in name)
    assert len(dropped) == 2
    save_file({name: value for name, value in tensors.items() if name not in dropped}, str(damaged / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(PretrainedWeightsError, match=r"loads only in part: of the model's \d+ tensors, 2 missing from the checkpoint") as error:
        instantiate(_model_cfg(tmp_path, f"model.pretrained={damaged}"), label_map=SHAPES)
    assert "model.decoder.layers.0.mlp.fc1.weight" in str(error.value)  # named as the model names it
    detector = instantiate(_model_cfg(tmp_path, f"model.pretrained={damaged}", "model.allow_partial_load=true"), label_map=SHAPES)
    loaded, source = detector.model.state_dict(), RTDetrForObjectDetection.from_pretrained(rt_detr_artifact).state_dict()
    kept = [name for name in source if ".decoder.layers.0.mlp.fc1." not in name]
    assert len(kept) == len(source) - 2 and all(torch.equal(loaded[name], source[name]) for name in kept)
    assert not any(torch.equal(loaded[name], source[name]) for name in source if name not in kept)  # random, not the checkpoint's


# --- What loads, loads in full, for the dataset's classes ---


def test_class_dependent_layers_are_found_by_shape_not_by_name() -> None:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig, YolosConfig, YolosForObjectDetection

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", out_features=["stage2"])
    detr = DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                      encoder_attention_heads=2, decoder_attention_heads=2, num_queries=4, num_labels=3)  # fmt: skip
    assert class_dependent_keys(DetrForObjectDetection, detr) == {"class_labels_classifier.weight", "class_labels_classifier.bias"}
    yolos = YolosConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=[32, 32], patch_size=8,
                        num_detection_tokens=4, num_labels=3)  # fmt: skip
    assert class_dependent_keys(YolosForObjectDetection, yolos) == {"class_labels_classifier.layers.2.weight", "class_labels_classifier.layers.2.bias"}


def test_other_classes_get_a_new_head_and_the_same_classes_keep_it(tmp_path: Path, rt_detr_artifact: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from transformers import RTDetrForObjectDetection

    source = RTDetrForObjectDetection.from_pretrained(rt_detr_artifact).state_dict()
    cfg = _model_cfg(tmp_path)
    head = class_dependent_keys(RTDetrForObjectDetection, RTDetrForObjectDetection.config_class.from_pretrained(rt_detr_artifact))
    # The classifiers of every decoder layer and of the encoder's proposals, and the denoising queries' class embedding.
    assert head and all("class_embed" in name or "score_head" in name for name in head)

    with caplog.at_level(logging.INFO, logger="cvexp"):
        other = load_pretrained(RTDetrForObjectDetection, str(rt_detr_artifact), LabelMap([Category(7, "rbc"), Category(9, "wbc")]))
    state = other.model.state_dict()
    assert sorted(other.report.reinitialised) == sorted(head) and not other.report.not_loaded
    assert all(torch.equal(state[name], value) for name, value in source.items() if name not in head)
    assert all(state[name].shape[0] in (2, 3) for name in head if name.endswith("weight"))  # 2 classes (+1 for denoising)
    assert other.model.config.id2label == {0: "rbc", 1: "wbc"}
    assert "re-initialised for the dataset's 2 classes (rbc, wbc)" in caplog.text

    # Three classes of other names: the shapes match, the head is still new.
    renamed = load_pretrained(RTDetrForObjectDetection, str(rt_detr_artifact), LabelMap([Category(1, "a"), Category(2, "b"), Category(3, "c")]))
    assert sorted(renamed.report.reinitialised) == sorted(head)
    assert not all(torch.equal(renamed.model.state_dict()[name], source[name]) for name in head)

    same = load_pretrained(RTDetrForObjectDetection, str(rt_detr_artifact), SHAPES)  # fine-tuning one's own model further
    assert not same.report.reinitialised and not same.report.not_loaded
    assert all(torch.equal(same.model.state_dict()[name], value) for name, value in source.items())
    assert same.weights.source == str(rt_detr_artifact.resolve()) and same.weights.sha256 == weights_sha256(rt_detr_artifact)
    assert same.weights.parent == {"source": RANDOM_INIT}  # the artifact's own start
    assert cfg.allow_partial_load is False


@needs_rbc
def test_fine_tuned_from_a_local_artifact_it_trains_and_is_used_without_its_source(tmp_path: Path, shared_data_dir: Path,
                                                                                    rt_detr_artifact: Path) -> None:  # fmt: skip
    """Shapes -> RBC cells (other classes): trains in train mode, records its source, and lives on without it."""
    from cvexp.deployment.registration import run_registration
    from cvexp.evaluation.evaluator import run_evaluation

    source = tmp_path / "pretrained_model"
    shutil.copytree(rt_detr_artifact, source)
    modes = RecordTrainMode()
    cfg = compose_train_config(tmp_path, shared_data_dir, ["data=rbc_cells", f"data.root={RBC_CELLS}", "data.image_size=96", f"model.pretrained={source}",
                                                           "debug=smoke", "trainer.max_epochs=1"])  # fmt: skip
    summary = run_training(cfg, extra_callbacks=[modes])

    # Every module trained in train mode (from_pretrained hands models back in eval mode).
    assert len(modes.modes) > 100 and all(modes.modes.values()), [name for name, training in modes.modes.items() if not training]
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.tags["cvexp.weights"].startswith(f"{source} (sha256:")
    metadata = json.loads((summary.artifact_dir / "cvexp.json").read_text())
    assert metadata["weights"]["source"] == str(source) and metadata["weights"]["parent"] == {"source": RANDOM_INIT}
    assert [c["name"] for c in metadata["categories"]] == ["rbc", "wbc"]

    shutil.move(source, tmp_path / "moved_away")  # neither the source artifact nor the hub is needed any more
    for ckpt_path in (summary.artifact_dir, summary.best_model_path):
        evaluation = run_evaluation(compose_train_config(tmp_path / "evaluate", shared_data_dir, [f"ckpt_path={ckpt_path}", "split=val", "logger=none"],
                                                         config_name="evaluate"))  # fmt: skip
        assert 0.0 <= evaluation.metrics["map"] <= 1.0
    registered = run_registration(compose_train_config(tmp_path / "register", shared_data_dir,
                                                       [f"ckpt_path={summary.artifact_dir}", f"paths.mlflow_dir={tmp_path}/outputs/mlflow"],
                                                       config_name="register"))  # fmt: skip
    # What the server runs: the registered pyfunc model, loaded from the registry, predicting on a base64 image.
    import mlflow.pyfunc
    import pandas as pd

    from cvexp.deployment.pyfunc import encode_image_file

    mlflow.set_registry_uri(cfg.logger.tracking_uri)
    served = mlflow.pyfunc.load_model(registered.model_uri)
    image = next((RBC_CELLS / "test").glob("*.jpg"))
    (records,) = served.predict(pd.DataFrame({"image": [encode_image_file(image)]}), params={"score_threshold": 0.0})
    assert records and {r["category_name"] for r in records} <= {"rbc", "wbc"}
