"""ONNX export with the accuracy gate: the exported graph scores what the PyTorch model scores, a corrupted one is refused.

Each model family is trained briefly here (no hub), exported by ``cvexp.export``, and run by
onnxruntime through the one inference path (:class:`cvexp.inference.onnx.OnnxPredictor`): the
detections must equal PyTorch's (scores and boxes to float tolerance) and the gated mAP must be
within 0.005. A graph whose weights are damaged after export must fail the gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvexp.deployment.export import EXPORT_INFO_FILE, accuracy_gate
from cvexp.evaluation.evaluator import model_split
from cvexp.inference.onnx import ONNX_FILE, OnnxPredictor, onnx_session
from cvexp.inference.predictor import Predictor
from cvexp.paths import CONFIG_DIR
from cvexp.training import run_training

pytest.importorskip("onnxruntime", reason="onnxruntime is a dependency of cvexp (pyproject.toml): install the project with `make setup`")


def _train(train_config, tmp_path: Path, model: str, overrides: list[str]) -> Path:
    cfg = train_config([f"model={model}", "logger=none", "test_after_fit=false", "num_threads=2", f"paths.output_dir={tmp_path}/{model}", *overrides])
    return run_training(cfg).artifact_dir


def _export(artifact: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cvexp.export", f"ckpt_path={artifact}", f"hydra.run.dir={tmp_path}/export", "num_threads=2", *overrides]
    return subprocess.run(command, capture_output=True, text=True, cwd=CONFIG_DIR.parent, timeout=900)


def _same_detections(artifact: Path) -> None:
    """PyTorch and onnxruntime give the same ranked detections on the stored data's val split."""
    reference = Predictor.load(artifact, device="cpu")
    exported = Predictor.load(artifact / ONNX_FILE)
    assert isinstance(exported, OnnxPredictor)
    dataset, _ = model_split(reference, None, "val", str(artifact))
    images = [dataset[index].image for index in range(8)]
    for ours, theirs in zip(reference.predict_images(images, batch_size=4), exported.predict_images(images, batch_size=3), strict=True):
        np.testing.assert_allclose(theirs.scores.numpy(), ours.scores.numpy(), atol=1e-4)
        # Each of the top 50 exported detections is one of PyTorch's: the same class, score and box. (Not at the same
        # rank: a barely trained model scores many queries alike, and float noise may swap near-equal ones.)
        rows = {name: np.c_[p.scores.numpy(), p.boxes.numpy(), p.category_ids.numpy()] for name, p in (("ours", ours), ("theirs", theirs))}
        difference = np.abs(rows["theirs"][:50, None, :] - rows["ours"][None, :, :])
        same = (difference[..., 0] < 1e-4) & (difference[..., 1:5] < 1e-2).all(-1) & (difference[..., 5] == 0)  # box: pixels of 96
        assert same.any(axis=1).all(), f"exported detections that PyTorch does not make: {rows['theirs'][:50][~same.any(axis=1)][:3]}"


@pytest.fixture(scope="module")
def rt_detr_artifact(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """The default (a tiny RT-DETR) trained for one epoch on the shapes (val mAP50 about 0.05), then exported."""
    from tests.conftest import compose_train_config

    root = tmp_path_factory.mktemp("export")
    cfg = compose_train_config(root, shared_data_dir, ["logger=none", "test_after_fit=false", "trainer.max_epochs=1", "num_threads=2"])
    artifact = run_training(cfg).artifact_dir
    result = _export(artifact, root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "accuracy gate" in result.stdout and (artifact / ONNX_FILE).is_file()
    return artifact


def test_the_default_exports_within_the_gate_and_runs_through_evaluate(rt_detr_artifact: Path, tmp_path: Path) -> None:
    info = json.loads((rt_detr_artifact / EXPORT_INFO_FILE).read_text())
    gate = info["gate"]
    assert gate["passed"] and gate["pytorch"]["map_50"] > 0.02, gate  # several times the tolerance: a corrupted graph must show
    for metric in ("map", "map_50"):
        assert abs(gate["exported"][metric] - gate["pytorch"][metric]) <= 0.005
    assert info["inputs"] == ["pixel_values"] and info["outputs"] == ["boxes", "scores", "labels"]
    _same_detections(rt_detr_artifact)
    # cvexp.evaluate runs the exported file itself, through onnxruntime.
    command = [sys.executable, "-m", "cvexp.evaluate", f"ckpt_path={rt_detr_artifact / ONNX_FILE}", "split=val", "logger=none",
               f"hydra.run.dir={tmp_path}/evaluate"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=CONFIG_DIR.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same split and batches as the gate's: the same number, up to the order of onnxruntime's float sums.
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["map_50"] == pytest.approx(gate["exported"]["map_50"], abs=1e-4)


def test_a_corrupted_export_fails_the_gate(rt_detr_artifact: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(rt_detr_artifact / ONNX_FILE))
    generator = np.random.default_rng(0)
    for initializer in graph.graph.initializer:  # every large weight tensor perturbed by its own spread
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size >= 1024:
            noisy = values + generator.normal(0, values.std() * 0.5, values.shape).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(graph, str(corrupted))
    reference = Predictor.load(rt_detr_artifact, device="cpu")
    damaged = OnnxPredictor(onnx_session(corrupted), reference.image_processor, reference.adapter, reference.metadata)
    dataset, _ = model_split(reference, None, "val", str(rt_detr_artifact))
    result = accuracy_gate(reference, damaged, dataset, 16, ["map", "map_50"], 0.005, "val")
    assert not result.passed, result
    assert result.pytorch["map_50"] - result.exported["map_50"] > 0.005


@pytest.mark.long  # a second export (40 s): the gate's verdict itself is tested in-process above
def test_a_refused_export_writes_nothing_and_exits_non_zero(rt_detr_artifact: Path, tmp_path: Path) -> None:
    """The refusal path of the job: a gate that nothing passes (a negative tolerance) leaves no file behind."""
    before = (rt_detr_artifact / ONNX_FILE).stat().st_mtime_ns
    result = _export(rt_detr_artifact, tmp_path, "gate.tolerance=-1")
    assert result.returncode != 0
    assert "refused by the accuracy gate" in result.stdout + result.stderr
    assert not (rt_detr_artifact / f"{ONNX_FILE}.partial").exists()
    assert (rt_detr_artifact / ONNX_FILE).stat().st_mtime_ns == before  # the earlier, gated export is untouched


@pytest.mark.long  # two trainings and exports (2.5 min): CI's time is spent on the default's export above
@pytest.mark.parametrize("model", ["detr", "conditional_detr"])
def test_other_families_export_within_the_gate(model: str, train_config, tmp_path: Path) -> None:
    """DETR (softmax scoring, a pixel mask input) and Conditional DETR (sigmoid top-k): exported, gated, the same detections."""
    artifact = _train(train_config, tmp_path, model, ["debug=smoke"])
    result = _export(artifact, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gate = json.loads((artifact / EXPORT_INFO_FILE).read_text())["gate"]
    assert all(abs(gate["exported"][m] - gate["pytorch"][m]) <= 0.005 for m in ("map", "map_50")), gate
    _same_detections(artifact)


@pytest.mark.long  # a registration and a model server (1 min)
def test_the_registered_export_is_served_by_onnxruntime_over_http(rt_detr_artifact: Path, shared_data_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """cvexp.register of model.onnx: the pyfunc runs the export (onnxruntime pinned), and answers like the exported model in-process."""
    import requests

    import cvexp
    from cvexp.deployment.pyfunc import encode_image_file
    from cvexp.deployment.serving import mlflow_model_server
    from cvexp.tasks.detection import DetectionTask
    from tests.test_deployment import _assert_same_detections

    monkeypatch.setenv("CVEXP_ROOT", str(tmp_path))
    registered = cvexp.run("register", [f"ckpt_path={rt_detr_artifact / ONNX_FILE}", "registry.model_name=cvexp-onnx"])
    assert registered.artifact_dir == rt_detr_artifact
    from mlflow.artifacts import download_artifacts

    local = Path(download_artifacts(artifact_uri=f"{registered.model_uri}/requirements.txt", dst_path=str(tmp_path),
                                    tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db"))  # fmt: skip
    requirements = local.read_text()
    assert "onnxruntime==" in requirements, requirements
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    loaded = mlflow.pyfunc.load_model(registered.model_uri)
    loaded.predict(pd.DataFrame({"image": [encode_image_file(sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[0])]}))
    assert type(loaded.unwrap_python_model().predictor).__name__ == "ExportedModel"  # the export runs, not the PyTorch weights beside it

    exported = Predictor.load(rt_detr_artifact / ONNX_FILE)
    paths = sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[:3]
    from PIL import Image

    names = {c.id: c.name for c in exported.label_map.categories}
    expected = [DetectionTask().response(p, names, {"score_threshold": 0.05})
                for p in exported.predict_images([np.asarray(Image.open(path).convert("RGB")) for path in paths])]  # fmt: skip
    assert sum(map(len, expected)) > 0
    payload = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_file(p)] for p in paths]}, "params": {"score_threshold": 0.05}}
    with mlflow_model_server(registered.model_uri, tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db",
                             log_path=tmp_path / "server.log") as server:  # fmt: skip
        response = requests.post(f"{server.url}/invocations", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    for actual, wanted in zip(response.json()["predictions"], expected, strict=True):
        _assert_same_detections(actual, wanted)


# The served export's model, loaded by MLflow as a server loads it, answers a request; where its requirements pin no torch,
# in a process where torch cannot be imported.
_SERVE = """
import base64, json, sys
if sys.argv.pop(1) == "without-torch":
    for name in ("torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning"):
        sys.modules[name] = None  # `import torch` now raises ImportError, as where torch is not installed
import mlflow.pyfunc, pandas as pd
model_dir, *images = sys.argv[1:]
encoded = [base64.b64encode(open(path, "rb").read()).decode("ascii") for path in images]
answer = mlflow.pyfunc.load_model(model_dir).predict(pd.DataFrame({"image": encoded}), params={"score_threshold": 0.05})
print(json.dumps({"answer": answer, "served": type(mlflow.pyfunc.load_model(model_dir).unwrap_python_model().predictor).__name__}))
"""


def assert_served_without_torch(artifact: Path, images: list[Path], tmp_path: Path, needs_torch: bool = False) -> list[list[dict]]:
    """Saves the served MLflow model of ``artifact``'s export, answers ``images`` with it in a process where torch cannot be
    imported, and checks the answers against the PyTorch path's (OnnxPredictor and the task's records); returns them.
    ``needs_torch``: transformers declares that the image processor needs torch; the model pins it, and is served with it."""
    import mlflow.pyfunc
    from PIL import Image

    from cvexp.deployment.pyfunc import pyfunc_model_arguments

    exported = Predictor.load(artifact / ONNX_FILE)
    expected = [exported.response(p, {"score_threshold": 0.05}) for p in exported.predict_images([np.asarray(Image.open(i).convert("RGB")) for i in images])]
    model_dir = tmp_path / "served"
    mlflow.pyfunc.save_model(path=str(model_dir), **pyfunc_model_arguments(exported, artifact, images[0], 0.5))
    requirements = (model_dir / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and ("torch==" in requirements) == needs_torch, requirements
    assert (model_dir / "code" / "cvexp" / "deployment" / "exported_model.py").is_file()  # cvexp travels with the model
    mode = "with-torch" if needs_torch else "without-torch"
    result = subprocess.run([sys.executable, "-c", _SERVE, mode, str(model_dir), *map(str, images)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["served"] == "ExportedModel"
    for answer, wanted in zip(served["answer"], expected, strict=True):
        _assert_same_records(answer, wanted)
    return served["answer"]


def _assert_same_records(actual: list[dict], expected: list[dict]) -> None:
    """Each served record is one of the expected: the same ids and names, numbers to float tolerance (a box to 0.05 px),
    masks (RLE) differing in at most 0.1% of their pixels. Not compared by rank: float noise may swap near-equal scores."""
    from pycocotools import mask as coco_mask

    def same(a: dict, b: dict) -> bool:
        if a.keys() != b.keys():
            return False
        for key, value in a.items():
            if key == "rle_counts":
                masks = [coco_mask.decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]}) for r in (a, b)]
                if (masks[0] != masks[1]).mean() > 1e-3:
                    return False
            elif isinstance(value, float):
                if abs(value - b[key]) > 1e-3:
                    return False
            elif isinstance(value, list):
                if not np.allclose(value, b[key], atol=0.05):
                    return False
            elif value != b[key]:
                return False
        return True

    assert len(actual) == len(expected), (actual[:3], expected[:3])
    unmatched = [record for record in actual if not any(same(record, wanted) for wanted in expected)]
    assert not unmatched, f"served records that the PyTorch path does not give: {unmatched[:2]}; expected e.g. {expected[:2]}"


def test_the_served_export_answers_like_pytorch_without_torch(rt_detr_artifact: Path, shared_data_dir: Path, tmp_path: Path) -> None:
    """The ONNX pyfunc runs on onnxruntime, numpy, Pillow and the image processor: torch unimportable, the same detections."""
    answers = assert_served_without_torch(rt_detr_artifact, sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[:3], tmp_path)
    assert sum(map(len, answers)) > 0


@pytest.mark.long  # a virtual environment from the package registry (about 3 min, 1 GB) and a model server
def test_the_export_serves_over_http_from_an_environment_without_torch(rt_detr_artifact: Path, shared_data_dir: Path, tmp_path: Path) -> None:
    """The served export's own requirements.txt, installed into a fresh virtual environment (no torch, no cvexp), serve it."""
    import requests

    from cvexp.deployment.pyfunc import encode_image_file
    from cvexp.deployment.serving import mlflow_model_server

    images = sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[:3]
    expected = assert_served_without_torch(rt_detr_artifact, images, tmp_path)
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    python = environment / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(tmp_path / "served" / "requirements.txt")],
                             capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0  # really without torch
    assert subprocess.run([str(python), "-c", "import cvexp"], capture_output=True, cwd=tmp_path).returncode != 0  # and without cvexp
    payload = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_file(p)] for p in images]}, "params": {"score_threshold": 0.05}}
    with mlflow_model_server(str(tmp_path / "served"), log_path=tmp_path / "server.log", python=python) as server:
        response = requests.post(f"{server.url}/invocations", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    for answer, wanted in zip(response.json()["predictions"], expected, strict=True):
        _assert_same_records(answer, wanted)
