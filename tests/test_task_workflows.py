"""The workflow after training, for the tasks beyond detection: evaluate, predict, register, serve, monitor.

One short training per task (module-scoped); each job then runs on its model artifact as a user runs
it, and the served model answers over HTTP on 127.0.0.1 as prediction in this process does.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from PIL import Image
from pycocotools import mask as coco_mask

from cvexp.data.shapes import ANNOTATION_FILE
from cvexp.deployment.pyfunc import encode_image_file
from cvexp.deployment.registration import CHALLENGER, CHAMPION, run_registration
from cvexp.deployment.serving import mlflow_model_server
from cvexp.evaluation.evaluator import run_evaluation
from cvexp.inference.prediction import run_prediction
from cvexp.inference.predictor import Predictor
from cvexp.monitoring.drift import run_monitoring
from cvexp.training import run_training
from tests.conftest import compose_train_config
from tests.test_evaluation import _assert_same_numbers, _pycocotools_eval

# task -> (its synthetic data folder, the prediction features its drift report must hold, its training overrides)
TASKS = {
    "classification": ("shapes_classification", {"max_score", "class_frequency"}, []),
    "semantic_segmentation": ("shapes_semantic", {"mean_confidence", "share/circle", "class_frequency"}, []),
    # Mask2Former's masks are all empty after 20 steps of 2 images (and after 60 of 16 on the smoke test's cosine
    # schedule); 120 of 16 at a constant lr (about 30 s) score mask mAP50 0.07, so that the COCOeval comparison
    # compares numbers.
    "instance_segmentation": ("shapes_instance", {"detections_per_image", "mask_area", "class_frequency"},
                              ["data.batch_size=16", "trainer.limit_train_batches=120", "scheduler=constant"]),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(task, root, data folder of its split images, training summary): a short run of the task's default."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    cfg = compose_train_config(root, root / "datasets", [f"task={task}", "debug=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=20",
                                                          "test_after_fit=false", *TASKS[task][2]])  # fmt: skip
    return task, root, root / "datasets" / TASKS[task][0], run_training(cfg)


def _image_glob(split_dir: Path) -> str:
    """The split's images: JPEGs (the Roboflow layouts, mask PNGs beside them) or PNGs (the COCO shapes)."""
    return "*.jpg" if any(split_dir.glob("*.jpg")) else "*.png"


def _images(split_dir: Path, count: int | None = 3) -> list[Path]:
    return sorted(split_dir.glob(_image_glob(split_dir)))[:count]


def test_evaluate_scores_the_artifact_as_its_task_does(trained, tmp_path: Path) -> None:
    task, root, data_dir, summary = trained
    cfg = compose_train_config(tmp_path, root / "datasets", [f"ckpt_path={summary.artifact_dir}", "split=test", "logger=none"], config_name="evaluate")
    result = run_evaluation(cfg)
    predictor = Predictor.load(summary.artifact_dir, device="cpu")
    assert predictor.task.name == task
    headline = predictor.task.headline[0]
    assert 0.0 <= result.metrics[headline] <= 1.0
    rows = json.loads(result.files["results"].read_text())
    assert len({row["image_id"] for row in rows}) == 100  # every test image, in the task's results file
    assert json.loads(result.files["metrics"].read_text())[headline] == pytest.approx(result.metrics[headline])
    if task == "instance_segmentation":  # its numbers are COCOeval's, segm and bbox, on the file it wrote
        annotation_file = data_dir / "test" / ANNOTATION_FILE
        for iou_type, prefix in (("segm", "mask_"), ("bbox", "")):
            _assert_same_numbers(result.metrics, _pycocotools_eval(annotation_file, result.files["results"], iou_type), predictor.label_map.categories, prefix)
        assert 0 < result.metrics["mask_map_50"] != pytest.approx(result.metrics["map_50"])  # masks scored, not boxes


def test_predict_writes_the_task_results_file_for_a_folder_of_images(trained, tmp_path: Path) -> None:
    task, root, data_dir, summary = trained
    # A glob: a semantic split folder holds the label PNGs beside the images.
    cfg = compose_train_config(tmp_path, root / "datasets", [f"ckpt_path={summary.artifact_dir}", f"inputs={data_dir / 'test'}/{_image_glob(data_dir / 'test')}", "render=true"],
                               config_name="predict")  # fmt: skip
    result = run_prediction(cfg)
    rows = json.loads(result.results_path.read_text())  # a row per image, or per detection (COCO results)
    assert result.num_images == len({row["file_name"] for row in rows}) == 100
    assert {Path(row["file_name"]).name for row in rows} == {p.name for p in _images(data_dir / "test", count=None)}
    assert result.rendered and all(path.is_file() for path in result.rendered)


def test_registered_model_is_served_over_http_like_in_process_prediction(trained, tmp_path: Path) -> None:
    task, root, data_dir, summary = trained
    cfg = compose_train_config(tmp_path, root / "datasets", [f"ckpt_path={summary.artifact_dir}", f"paths.mlflow_dir={root}/outputs/mlflow"],
                               config_name="register")  # fmt: skip
    registration = run_registration(cfg)
    assert registration.model_name == f"cvexp-{task}"  # one registered model per task
    tracking_uri = f"sqlite:///{root}/outputs/mlflow/mlflow.db"
    client = MlflowClient(tracking_uri=tracking_uri)
    assert str(client.get_model_version_by_alias(f"cvexp-{task}", CHAMPION).version) == registration.version

    paths = _images(data_dir / "test")
    predictor = Predictor.load(summary.artifact_dir, device="cpu")
    names = {c.id: c.name for c in predictor.label_map.categories}
    params = {"score_threshold": 0.2}
    predictions = predictor.predict_images([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    expected = [predictor.task.response(p, names, params) for p in predictions]
    payload = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_file(p)] for p in paths]}, "params": params}
    bad_payloads = {
        "bad base64": {"dataframe_split": {"columns": ["image"], "data": [["%%% not base64 %%%"]]}},
        "not an image": {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"plain text").decode()]]}},
        "no image column": {"dataframe_split": {"columns": ["picture"], "data": [["x"]]}},
    }
    with mlflow_model_server(f"models:/cvexp-{task}@{CHALLENGER}", tracking_uri=tracking_uri, log_path=tmp_path / "server.log") as server:
        response = requests.post(f"{server.url}/invocations", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        for name, bad in bad_payloads.items():
            answer = requests.post(f"{server.url}/invocations", json=bad, timeout=60)
            assert 400 <= answer.status_code < 500 and "message" in answer.json(), (name, answer.status_code, answer.text)
    assert len(served) == len(expected)
    for actual, wanted, prediction in zip(served, expected, predictions, strict=True):
        assert [r["category_id"] for r in actual] == [r["category_id"] for r in wanted]
        for record, reference in zip(actual, wanted, strict=True):
            for key, value in reference.items():
                assert record[key] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), key
            if "rle_counts" in record and hasattr(prediction, "mask"):  # the served RLE decodes to exactly the class's pixels
                rle = {"size": [record["height"], record["width"]], "counts": record["rle_counts"].encode()}
                assert np.array_equal(coco_mask.decode(rle) > 0, (prediction.mask == record["category_id"]).numpy())


def test_monitor_reports_the_task_prediction_features(trained, tmp_path: Path) -> None:
    task, root, data_dir, summary = trained
    # p < 0.001 for "drifted": ten features are compared, and a model trained for seconds has a noisy top score (the
    # instance segmenter's max_score gave p = 0.006 between val and test, which come from one generator).
    overrides = [f"ckpt_path={summary.artifact_dir}", f"reference={data_dir / 'val'}", f"current={data_dir / 'test'}", "logger=none",
                 "thresholds.p_value=0.001"]  # fmt: skip
    result = run_monitoring(compose_train_config(tmp_path, root / "datasets", overrides, config_name="monitor"))
    report = json.loads(result.files["report"].read_text())
    features = {f["feature"] for f in report["features"]}
    assert TASKS[task][1] <= features and "brightness" in features, sorted(features)
    assert not result.drift, [(f.feature, f.p_value, f.psi) for f in result.features]  # val and test: the same generator


def test_export_is_gated_and_served_without_torch(trained, tmp_path: Path) -> None:
    """Each task's default exports within the gate (its headline metrics), and the export answers requests like the
    PyTorch path, with torch unimportable (instance segmentation: masks upsampled, thresholded and encoded in numpy;
    its Mask2Former image processor is declared by transformers to need torch, so that model pins torch)."""
    from cvexp.deployment.export import run_export
    from tests.test_export import assert_served_without_torch

    task, root, data_dir, summary = trained
    cfg = compose_train_config(tmp_path, root / "datasets", [f"ckpt_path={summary.artifact_dir}", "num_threads=2"], config_name="export")
    result = run_export(cfg)
    predictor = Predictor.load(summary.artifact_dir, device="cpu")
    assert result.passed and result.gated == list(predictor.task.headline)
    assert all(abs(difference) <= 0.005 for difference in result.differences.values())
    answers = assert_served_without_torch(summary.artifact_dir, _images(data_dir / "test"), tmp_path, needs_torch=task == "instance_segmentation")
    assert all(answers)  # every image answered: a class, or the classes of its pixels
