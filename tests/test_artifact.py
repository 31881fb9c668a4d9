"""The model artifact: what a training run writes, that it alone rebuilds the model, and that nothing in it runs code."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from cvexp.artifact import ArtifactError, load_artifact, load_checkpoint
from cvexp.errors import UnsafeArtifactError
from cvexp.inference.predictor import Predictor
from cvexp.paths import PACKAGE_DIR
from cvexp.training import run_training
from tests.conftest import compose_train_config

HF_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "cvexp.json"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path):
    """``python -m cvexp.train debug=smoke`` (in-process): (its root, the summary)."""
    root = tmp_path_factory.mktemp("trained")
    return root, run_training(compose_train_config(root, shared_data_dir, ["debug=smoke"]))


def test_a_training_run_writes_a_self_contained_model_artifact(trained) -> None:
    root, summary = trained
    artifact = summary.artifact_dir
    assert artifact == root / "run" / "model" and HF_FILES <= {p.name for p in artifact.iterdir()}
    metadata = json.loads((artifact / "cvexp.json").read_text())
    assert metadata["task"] == "detection" and metadata["model_class"] == "transformers.RTDetrForObjectDetection"
    assert metadata["adapter"] == {"_target_": "cvexp.adapters.create_adapter", "name": "rt_detr", "pass_pixel_mask": False, "top_k": 100}
    assert metadata["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    assert metadata["image_size"] == 96 and metadata["weights"] == {"source": "random-init"}
    assert metadata["mlflow_run_id"] == summary.mlflow_run_id and metadata["cvexp_version"]
    assert metadata["config"]["model"]["model_class"] == "transformers.RTDetrForObjectDetection"  # the resolved training config
    # The best checkpoint's own validation metrics (it is saved right after them), and the test run on it.
    assert metadata["metrics"]["val"]["map"] == pytest.approx(summary.optimized_value)
    assert metadata["metrics"]["test"] == pytest.approx(summary.test_metrics)

    # transformers alone loads it, every tensor included (no batch-norm counter missing or left over).
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    model, info = AutoModelForObjectDetection.from_pretrained(artifact, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert AutoImageProcessor.from_pretrained(artifact).size == {"height": 96, "width": 96}  # resizes as the training did


def test_the_artifact_and_the_checkpoint_rebuild_the_same_model(trained, shared_data_dir: Path) -> None:
    from cvexp.inference.inputs import ImageFilesDataset, resolve_inputs

    _, summary = trained
    images = ImageFilesDataset(resolve_inputs(str(shared_data_dir / "shapes" / "val"))[:6])
    from_artifact = Predictor.load(summary.artifact_dir, device="cpu").predict_dataset(images, batch_size=3)
    from_checkpoint = Predictor.load(summary.best_model_path, device="cpu").predict_dataset(images, batch_size=3)
    for (a, _), (b, _) in zip(from_artifact, from_checkpoint, strict=True):
        assert torch.equal(a.category_ids, b.category_ids) and torch.allclose(a.scores, b.scores) and torch.allclose(a.boxes, b.boxes)


def test_no_checkpoint_is_unpickled_with_code_outside_resume() -> None:
    # Lightning's resume (trainer.fit(ckpt_path=...)) reads checkpoints as torch does by default:
    # weights_only since torch 2.6. Nothing in cvexp asks for more.
    offenders = [str(path.relative_to(PACKAGE_DIR)) for path in PACKAGE_DIR.rglob("*.py") if re.search(r"weights_only\s*=\s*False", path.read_text())]
    assert not offenders


# --- Hostile checkpoints and artifacts: every job refuses them before anything runs ---


class _RunsCode:
    """Pickles as a call to os.system: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _job_config(job: str, tmp_path: Path, data_dir: Path, ckpt_path: Path):
    extra = {
        "evaluate": ["logger=none"],
        "predict": [f"inputs={data_dir / 'shapes' / 'val'}"],
        "register": [],
        "monitor": [f"reference={data_dir / 'shapes' / 'val'}", f"current={data_dir / 'shapes' / 'test'}", "logger=none"],
    }[job]
    return compose_train_config(tmp_path, data_dir, [f"ckpt_path={ckpt_path}", *extra], config_name=job)


def _run_job(job: str, cfg) -> None:
    from cvexp.deployment.registration import run_registration
    from cvexp.evaluation.evaluator import run_evaluation
    from cvexp.inference.prediction import run_prediction
    from cvexp.monitoring.drift import run_monitoring

    {"evaluate": run_evaluation, "predict": run_prediction, "register": run_registration, "monitor": run_monitoring}[job](cfg)


JOBS = ["evaluate", "predict", "register", "monitor"]


@pytest.mark.parametrize("job", JOBS)
def test_every_job_refuses_a_checkpoint_whose_pickle_would_run_code(job: str, trained, tmp_path: Path, shared_data_dir: Path) -> None:
    _, summary = trained
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.ckpt"
    checkpoint = torch.load(summary.best_model_path, weights_only=True)
    checkpoint["cvexp"]["payload"] = _RunsCode(f"touch {marker}")
    torch.save(checkpoint, hostile)
    with pytest.raises(UnsafeArtifactError, match="refuses to unpickle") as error:
        _run_job(job, _job_config(job, tmp_path, shared_data_dir, hostile))
    assert "posix.system" in str(error.value) or "os.system" in str(error.value)
    assert not marker.exists()


def _tampered_artifact(source: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered_model"
    shutil.copytree(source, copy)
    metadata = json.loads((copy / "cvexp.json").read_text())
    change(metadata)
    (copy / "cvexp.json").write_text(json.dumps(metadata))
    return copy


TAMPERINGS = {
    "adapter": lambda m: m.update(adapter={"_target_": "os.system", "_args_": ["touch CODE_RAN"]}),
    "adapter name": lambda m: m["adapter"].update(name="os.system"),
    "model_class": lambda m: m.update(model_class="os.system"),
    "model_class outside transformers": lambda m: m.update(model_class="torch.nn.Linear"),
}


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("field", sorted(TAMPERINGS))
def test_every_job_refuses_an_artifact_that_names_code(job: str, field: str, trained, tmp_path: Path, shared_data_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _, summary = trained
    monkeypatch.chdir(tmp_path)  # where "touch CODE_RAN" would write
    tampered = _tampered_artifact(summary.artifact_dir, tmp_path, TAMPERINGS[field])
    with pytest.raises(UnsafeArtifactError, match="refused|Refused"):
        _run_job(job, _job_config(job, tmp_path, shared_data_dir, tampered))
    assert not (tmp_path / "CODE_RAN").exists()


def test_a_stored_data_config_may_build_only_cvexp_components(trained, tmp_path: Path, shared_data_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cvexp.evaluation.evaluator import run_evaluation

    _, summary = trained
    monkeypatch.chdir(tmp_path)
    for target in ("os.system", "cvexp.data.coco.json.loads"):  # the second resolves through a cvexp module to json's function
        tampered = _tampered_artifact(summary.artifact_dir, tmp_path / target, lambda m, t=target: m["config"].update(
            data={"_target_": t, "_args_": ["touch CODE_RAN"]}))  # fmt: skip
        with pytest.raises(UnsafeArtifactError, match=rf"data._target_ '{re.escape(target)}' is not one of cvexp's own"):
            run_evaluation(_job_config("evaluate", tmp_path / target, shared_data_dir, tampered))
    assert not (tmp_path / "CODE_RAN").exists()
    # Data given on the command line is the user's own choice: it is used as given.
    cfg = compose_train_config(tmp_path / "given", shared_data_dir, [f"ckpt_path={tampered}", "logger=none", "data=shapes"],
                               config_name="evaluate")  # fmt: skip
    assert run_evaluation(cfg).metrics["map"] >= 0.0


def test_artifact_errors_name_the_file_and_the_field(trained, tmp_path: Path) -> None:
    _, summary = trained
    broken = _tampered_artifact(summary.artifact_dir, tmp_path, lambda m: m.pop("categories"))
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(broken / 'cvexp.json'))}: field 'categories' is missing"):
        load_artifact(broken)
    (broken / "cvexp.json").unlink()
    with pytest.raises(ArtifactError, match="no cvexp.json, so it is not a cvexp model artifact"):
        load_artifact(broken)
    with pytest.raises(ArtifactError, match="no such file or directory"):
        Predictor.load(tmp_path / "nowhere")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(summary.best_model_path).read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
