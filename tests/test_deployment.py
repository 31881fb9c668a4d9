"""Registration (aliases), serving over HTTP, the Hugging Face export, and drift monitoring."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from PIL import Image

from cvexp.deployment.pyfunc import encode_image_file
from cvexp.deployment.registration import CHALLENGER, CHAMPION, METRIC_VALUE_TAG, decide_promotion, run_registration
from cvexp.deployment.serving import mlflow_model_server
from cvexp.inference.predictor import Predictor
from cvexp.monitoring.drift import population_stability_index, run_monitoring
from cvexp.paths import CONFIG_DIR
from cvexp.tasks import DetectionTask
from cvexp.training import run_training
from tests.conftest import compose_train_config

MODEL_NAME = "cvexp-detection"
THRESHOLD = 0.15  # the fixture's short training scores its best detections about 0.2-0.25


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """A smoke training on the shapes data, logged to MLflow: (its root, the data folder, the summary)."""
    root = tmp_path_factory.mktemp("trained")
    # 60 steps rather than the smoke's 3: the comparisons need detections above THRESHOLD, and a model
    # that starts at the focal prior (1 %) only scores that high once it has learned a little.
    cfg = compose_train_config(root, root / "datasets", ["debug=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=60",
                                                          "test_after_fit=false"])  # fmt: skip
    return root, root / "datasets", run_training(cfg)


def _register(root: Path, data_dir: Path, tmp_path: Path, overrides: list[str]):
    # The training's MLflow store: the registry lives in the same sqlite file.
    cfg = compose_train_config(tmp_path, data_dir, [f"paths.mlflow_dir={root}/outputs/mlflow", *overrides], config_name="register")
    return run_registration(cfg)


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory: pytest.TempPathFactory):
    root, data_dir, summary = trained
    return _register(root, data_dir, tmp_path_factory.mktemp("register"), [f"ckpt_path={summary.artifact_dir}"])


def _tracking_uri(root: Path) -> str:
    return f"sqlite:///{root}/outputs/mlflow/mlflow.db"


def _images(data_dir: Path, split: str = "test", count: int = 3) -> list[Path]:
    return sorted((data_dir / "shapes" / split).glob("*.png"))[:count]


def _assert_same_detections(actual: list[dict], expected: list[dict], box_tolerance: float = 1e-3) -> None:
    """Same count; each detection has a counterpart of the same class, score and box (order may differ on ties)."""
    assert len(actual) == len(expected)
    remaining = list(expected)
    for record in actual:
        candidates = [r for r in remaining if r["category_id"] == record["category_id"] and abs(r["score"] - record["score"]) < 1e-4]
        assert candidates, record
        best = min(candidates, key=lambda r: float(np.abs(np.subtract(r["bbox"], record["bbox"])).max()))
        assert np.allclose(best["bbox"], record["bbox"], atol=box_tolerance), (best, record)
        assert best["category_name"] == record["category_name"]
        remaining.remove(best)


def test_promotion_rule() -> None:
    assert decide_promotion(0.1, None, has_champion=False) == (True, "there is no champion yet")
    assert decide_promotion(0.5, 0.4, has_champion=True)[0]
    assert not decide_promotion(0.4, 0.4, has_champion=True)[0]  # a tie keeps the champion
    assert not decide_promotion(0.3, 0.4, has_champion=True)[0]
    assert decide_promotion(0.3, 0.4, has_champion=True, mode="min")[0]
    assert decide_promotion(0.1, 0.9, has_champion=True, force=True) == (True, "promote=true")
    assert not decide_promotion(None, 0.4, has_champion=True)[0]
    assert not decide_promotion(float("nan"), 0.4, has_champion=True)[0]
    assert not decide_promotion(0.5, None, has_champion=True)[0]  # a champion without the metric: only promote=true
    with pytest.raises(ValueError, match="mode="):
        decide_promotion(0.5, 0.4, has_champion=True, mode="best")


def test_registration_sets_aliases_and_keeps_a_better_champion(trained, registered, tmp_path: Path) -> None:
    root, data_dir, summary = trained
    client = MlflowClient(tracking_uri=_tracking_uri(root), registry_uri=_tracking_uri(root))
    first = registered
    assert first.champion and first.reason == "there is no champion yet"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == first.version
    assert first.metric_name == "val/map" and 0.0 <= first.metric_value <= 1.0
    assert first.artifact_dir == summary.artifact_dir  # the training's artifact is logged as it is
    # The same model again, from its checkpoint: evaluated with the champion on the same split in the same call, it ties,
    # so it becomes the challenger only.
    second = _register(root, data_dir, tmp_path, [f"ckpt_path={summary.best_model_path}"])
    assert second.champion_value == second.metric_value == first.metric_value
    assert not second.champion and "does not beat" in second.reason
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == second.version
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == first.version
    model_version = client.get_model_version(MODEL_NAME, second.version)
    assert client.get_run(model_version.run_id).data.tags["cvexp.source_run_id"] == summary.mlflow_run_id


def test_the_champion_decision_scores_both_models_now_not_a_logged_number(trained, tmp_path: Path) -> None:
    """A worse champion that claims a perfect score in its tag is replaced: both are evaluated on the split, in the call."""
    import torch

    root, data_dir, summary = trained
    worse = Predictor.load(summary.artifact_dir, device="cpu")
    with torch.no_grad():
        for name, parameter in worse.model.named_parameters():
            if "class_embed" in name or "score_head" in name:
                parameter.zero_()  # every class scores 0.5 everywhere: no ranking, mAP near 0
    worse_dir = worse.save(tmp_path / "worse_model")
    name = ["registry.model_name=cvexp-detector-scoring"]
    client = MlflowClient(tracking_uri=_tracking_uri(root), registry_uri=_tracking_uri(root))
    champion = _register(root, data_dir, tmp_path / "a", [f"ckpt_path={worse_dir}", *name])
    client.set_model_version_tag("cvexp-detector-scoring", champion.version, METRIC_VALUE_TAG, "1.0")
    better = _register(root, data_dir, tmp_path / "b", [f"ckpt_path={summary.artifact_dir}", *name])
    assert better.champion_value == pytest.approx(champion.metric_value)
    assert better.metric_value > better.champion_value and better.champion, better.reason
    assert str(client.get_model_version_by_alias("cvexp-detector-scoring", CHAMPION).version) == better.version


def test_served_model_answers_like_in_process_prediction(trained, registered, tmp_path: Path) -> None:
    root, data_dir, summary = trained
    paths = _images(data_dir)
    predictor = Predictor.load(summary.artifact_dir, device="cpu")
    names = {c.id: c.name for c in predictor.label_map.categories}
    expected = [DetectionTask().response(d, names, {"score_threshold": THRESHOLD}) for d in predictor.predict_images([np.asarray(Image.open(p).convert("RGB")) for p in paths])]
    assert sum(map(len, expected)) > 0

    payload = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_file(p)] for p in paths]}, "params": {"score_threshold": THRESHOLD}}
    not_an_image = base64.b64encode(b"plain text, no image").decode()
    bad_payloads = {
        "bad base64": {"dataframe_split": {"columns": ["image"], "data": [["%%% not base64 %%%"]]}},
        "not an image": {"dataframe_split": {"columns": ["image"], "data": [[not_an_image]]}},
        "empty list": {"dataframe_split": {"columns": ["image"], "data": []}},
        "no image column": {"dataframe_split": {"columns": ["picture"], "data": [[not_an_image]]}},
    }
    log_path = tmp_path / "server.log"
    with mlflow_model_server(f"models:/{MODEL_NAME}@{CHALLENGER}", tracking_uri=_tracking_uri(root), log_path=log_path) as server:
        url = server.url
        response = requests.post(f"{url}/invocations", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        for name, bad in bad_payloads.items():
            answer = requests.post(f"{url}/invocations", json=bad, timeout=60)
            assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
            assert "message" in answer.json(), name
        # The default threshold (0.5) applies without params, and the server still answers.
        again = requests.post(f"{url}/invocations", json={"dataframe_split": payload["dataframe_split"]}, timeout=60)
        assert again.status_code == 200
        assert all(record["score"] >= 0.5 for image in again.json()["predictions"] for record in image)
        # Concurrent one-image requests share the server's forward passes (cvexp.deployment.batching):
        # each still gets its own image's answer.
        def one_image(index: int) -> list[dict]:
            body = {"dataframe_split": {"columns": ["image"], "data": [payload["dataframe_split"]["data"][index % len(paths)]]},
                    "params": {"score_threshold": THRESHOLD}}  # fmt: skip
            answer = requests.post(f"{url}/invocations", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            return answer.json()["predictions"][0]

        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(one_image, range(4 * len(paths))))
    for index, actual in enumerate(concurrent):
        _assert_same_detections(actual, expected[index % len(paths)])
    assert len(served) == len(paths)
    for actual, wanted in zip(served, expected, strict=True):
        _assert_same_detections(actual, wanted)


def test_the_artifact_gives_the_same_detections_in_a_transformers_pipeline(trained, registered) -> None:
    """The pipeline's post-processing (top 100 of queries x classes, sigmoid) is the adapter's; boxes come as integer corners."""
    from transformers import pipeline

    _, data_dir, summary = trained
    predictor = Predictor.load(summary.best_model_path, device="cpu")  # the checkpoint: the same model as the artifact
    names = {c.id: c.name for c in predictor.label_map.categories}
    detect = pipeline("object-detection", model=str(registered.artifact_dir), device="cpu")
    for path in _images(data_dir):
        image = Image.open(path).convert("RGB")
        (detections,) = predictor.predict_images([np.asarray(image)])
        # The RT-DETR processor keeps the top num_queries of queries x classes (cvexp's adapter the top 100): compare those.
        (ours,) = [DetectionTask().response(d, names, {"score_threshold": THRESHOLD})[: predictor.model.config.num_queries] for d in [detections]]
        theirs = detect(image, threshold=THRESHOLD)
        assert len(theirs) == len(ours) > 0
        as_records = [{"bbox": [r["box"]["xmin"], r["box"]["ymin"], r["box"]["xmax"] - r["box"]["xmin"], r["box"]["ymax"] - r["box"]["ymin"]],
                       "score": r["score"], "category_name": r["label"],
                       "category_id": predictor.label_map.categories[predictor.model.config.label2id[r["label"]]].id}
                      for r in theirs]  # fmt: skip
        # The pipeline truncates corners to integers: a box is within 1 pixel on each side, 2 in size.
        _assert_same_detections(as_records, ours, box_tolerance=2.0)


def _write_images(sources: list[Path], folder: Path, brightness: float = 1.0, scale: float = 1.0) -> Path:
    folder.mkdir(parents=True)
    for source in sources:
        image = Image.open(source).convert("RGB")
        if scale != 1.0:
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        pixels = np.asarray(image, dtype=np.float32) * brightness
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / source.name)
    return folder


def test_population_stability_index() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=2000)
    assert population_stability_index(reference, rng.normal(size=2000)) < 0.05
    assert population_stability_index(reference, rng.normal(loc=1.0, size=2000)) > 0.5
    assert population_stability_index(np.full(50, 96.0), np.full(50, 96.0)) == 0.0
    assert population_stability_index(np.full(50, 96.0), np.full(50, 144.0)) > 5


def test_monitor_flags_darkened_and_rescaled_images_only(trained, tmp_path: Path) -> None:
    root, data_dir, summary = trained
    shapes = data_dir / "shapes"
    test_images = _images(data_dir, "test", count=60)
    overrides = [f"ckpt_path={summary.best_model_path}", f"reference={shapes / 'val'}", f"paths.mlflow_dir={root}/outputs/mlflow"]

    # The test split against the validation split: the same generator, no drift.
    same = run_monitoring(compose_train_config(tmp_path / "same", data_dir, [*overrides, f"current={shapes / 'test'}"], config_name="monitor"))
    assert not same.drift, [(f.feature, f.p_value, f.psi) for f in same.features]
    report = json.loads(same.files["report"].read_text())
    assert report["drift"] is False and {f["feature"] for f in report["features"]} >= {"brightness", "score", "class_frequency"}
    client = MlflowClient(tracking_uri=_tracking_uri(root))
    run = client.get_run(same.mlflow_run_id)
    assert run.data.metrics["drift"] == 0.0 and "brightness/psi" in run.data.metrics
    assert {a.path for a in client.list_artifacts(same.mlflow_run_id, "monitoring")} == {"monitoring/drift_report.json", "monitoring/drift_features.png"}

    rescaled = _write_images(test_images, tmp_path / "rescaled", scale=1.5)
    result = run_monitoring(compose_train_config(tmp_path / "rescaled_run", data_dir, [*overrides, f"current={rescaled}", "logger=none"],
                                                 config_name="monitor"))  # fmt: skip
    assert result.drift and {"width", "height"} <= set(result.drifted)

    # The command line: darkened images drift, and the exit status says so.
    darkened = _write_images(test_images, tmp_path / "darkened", brightness=0.4)
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path / "cli"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cvexp.monitor", f"ckpt_path={summary.best_model_path}", f"reference={shapes / 'val'}",
               f"current={darkened}", "logger=none"]  # fmt: skip
    completed = subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-3000:]
    (run_dir,) = (tmp_path / "cli" / "outputs" / "runs" / "monitor").iterdir()
    cli_report = json.loads((run_dir / "drift_report.json").read_text())
    assert cli_report["drift"] and "brightness" in cli_report["drifted"]
    assert (run_dir / "drift_features.png").is_file()
    shutil.rmtree(tmp_path / "cli", ignore_errors=True)


def test_served_images_are_decoded_as_training_reads_them(tmp_path: Path) -> None:
    """Transparency on white and EXIF orientation, as cvexp.data.images.load_rgb_image gives them."""
    from cvexp.data.images import load_rgb_image
    from cvexp.deployment.pyfunc import decode_images

    transparent = Image.new("RGBA", (40, 20), (10, 200, 30, 0))
    transparent.paste((200, 10, 10, 255), (0, 0, 10, 10))
    transparent.save(tmp_path / "alpha.png")
    rotated = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to show upright
    rotated.save(tmp_path / "rotated.jpg", exif=exif)

    decoded = decode_images([encode_image_file(tmp_path / "alpha.png"), encode_image_file(tmp_path / "rotated.jpg")])
    assert np.array_equal(decoded[0], load_rgb_image(tmp_path / "alpha.png"))
    assert (decoded[0][15, 30] == 255).all()  # a transparent pixel comes out white, not green
    assert decoded[1].shape == (40, 20, 3)  # upright: taller than wide
    assert np.array_equal(decoded[1], load_rgb_image(tmp_path / "rotated.jpg"))
