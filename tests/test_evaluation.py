"""Evaluation and prediction: pycocotools parity, report files, MLflow runs, the command lines."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval

from cvexp.adapters import Detections
from cvexp.data import Category, CocoDetectionDataset, DetectionTarget
from cvexp.evaluation.coco_metric import COCO_STAT_NAMES
from cvexp.evaluation.evaluator import confusion_matrix, dataset_image_loader, run_evaluation, write_report
from cvexp.inference.prediction import run_prediction
from cvexp.paths import CONFIG_DIR
from cvexp.training import run_training
from tests.conftest import RBC_CELLS, compose_train_config, needs_rbc
from tests.test_metrics import _noisy_detections
from tests.test_training import _artifact_paths

SHAPE_IDS = {1: "circle", 2: "square", 3: "triangle"}


def _pycocotools_eval(annotation_file: Path, results_file: Path, iou_type: str = "bbox") -> COCOeval:
    """pycocotools run directly on the split's own annotation file and a results json.

    Annotation ids are shifted by one: pycocotools reads a matched ground-truth id of 0 as
    "unmatched", and RBC cells numbers its annotations from 0 (cvexp renumbers them likewise).
    """
    dataset = json.loads(annotation_file.read_text())
    for annotation in dataset["annotations"]:
        annotation["id"] += 1
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_file)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _assert_same_numbers(metrics: dict[str, float], evaluator: COCOeval, categories: list[Category], prefix: str = "") -> None:
    """cvexp's ``metrics`` (``prefix`` ``mask_`` for segm) are ``evaluator``'s twelve numbers and per-class AP."""
    for name, expected in zip(COCO_STAT_NAMES, evaluator.stats, strict=True):
        assert metrics[f"{prefix}{name}"] == pytest.approx(expected, abs=1e-6), f"{prefix}{name}"
    for category in categories:
        precision = evaluator.eval["precision"][:, :, evaluator.params.catIds.index(category.id), 0, -1]
        valid = precision[precision > -1]
        assert metrics[f"{prefix}ap/{category.name}"] == pytest.approx(valid.mean() if valid.size else -1.0, abs=1e-6), category.name


def _assert_png(path: Path, min_side: int = 300) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side, (path, image.size)
        assert np.asarray(image.convert("L")).std() > 5, f"{path} is blank"


@needs_rbc
def test_report_equals_pycocotools_on_noisy_rbc_results(tmp_path: Path) -> None:
    """A non-trivial case: jittered ground truth, wrong classes, false positives, random scores."""
    dataset = CocoDetectionDataset(str(RBC_CELLS / "test"))
    categories = dataset.label_map.categories
    assert [c.id for c in categories] == [1, 2]  # 0 is the unused supercategory
    predictions = list(zip(_noisy_detections(dataset, seed=1), [dataset[i].target for i in range(len(dataset))], strict=True))
    report = write_report(predictions, categories, tmp_path, dataset_image_loader(dataset), score_threshold=0.3)

    evaluator = _pycocotools_eval(dataset.annotation_path, report.files["results"])
    _assert_same_numbers(report.metrics, evaluator, categories)
    assert 0.1 < report.metrics["map_50"] < 0.99 and 0.1 < report.metrics["ap/rbc"] < 0.99
    assert json.loads(report.files["metrics"].read_text()) == report.metrics
    rows = json.loads(report.files["results"].read_text())
    assert len(rows) == report.num_predictions == sum(len(d.scores) for d, _ in predictions)
    assert {row["category_id"] for row in rows} == {1, 2}
    for kind in ("pr_curves", "confusion_matrix", "samples"):
        _assert_png(report.files[kind])


def test_confusion_matrix_counts_matches_misses_and_false_positives() -> None:
    categories = [Category(3, "a"), Category(7, "b")]
    target = DetectionTarget(
        image_id=1, boxes=torch.tensor([[0, 0, 10, 10], [50, 50, 10, 10], [100, 100, 10, 10], [0, 100, 20, 20]], dtype=torch.float32),
        category_ids=torch.tensor([3, 7, 7, 3]), iscrowd=torch.tensor([0, 0, 0, 1]), area=torch.full((4,), 100.0), size=(200, 200),
    )  # fmt: skip
    detections = Detections(
        image_id=1,
        boxes=torch.tensor([[1, 1, 10, 10], [50, 50, 10, 10], [150, 0, 10, 10], [0, 100, 20, 20], [101, 101, 10, 10]], dtype=torch.float32),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1]),  # the last is below the threshold
        category_ids=torch.tensor([3, 3, 7, 3, 7]),
    )  # fmt: skip
    matrix = confusion_matrix([(detections, target)], categories, iou_threshold=0.5, score_threshold=0.25)
    # rows: truth a, b, background; columns: predicted a, b, background. The crowd box is left out,
    # so the detection on it is a false positive.
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]


def test_checkpoint_without_cvexp_section_is_refused(tmp_path: Path) -> None:
    from cvexp.artifact import ArtifactError
    from cvexp.inference.predictor import Predictor

    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ArtifactError, match="not\n?.*written by this version of cvexp.train"):
        Predictor.load(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, int]:
    """A smoke training of the default model on the shapes data (with MLflow): (its root, the data
    folder, the summary, the detections it makes per image: its adapter's top-k of queries x 3 classes)."""
    root = tmp_path_factory.mktemp("trained")
    cfg = compose_train_config(root, root / "datasets", ["debug=smoke", "trainer.max_epochs=1"])
    summary = run_training(cfg)
    return root, root / "datasets", summary, min(cfg.adapter.top_k, cfg.model.config.num_queries * len(SHAPE_IDS))


def test_training_writes_and_logs_the_test_report(trained) -> None:
    root, _, summary, _ = trained
    report_dir = root / "run" / "evaluation" / "test"
    for name in ("pr_curves.png", "confusion_matrix.png", "samples.png"):
        _assert_png(report_dir / name)
    rows = json.loads((report_dir / "coco_results.json").read_text())
    assert rows and {row["category_id"] for row in rows} <= set(SHAPE_IDS)
    assert json.loads((report_dir / "metrics.json").read_text())["map"] == pytest.approx(summary.test_metrics["map"], abs=1e-3)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/outputs/mlflow/mlflow.db")
    artifacts = _artifact_paths(client, summary.mlflow_run_id)
    assert {"evaluation/test/coco_results.json", "evaluation/test/pr_curves.png", "evaluation/test/confusion_matrix.png"} <= set(artifacts)


def test_evaluate_writes_the_report_and_one_mlflow_run(trained, tmp_path: Path) -> None:
    root, data_dir, summary, per_image = trained
    # The training's MLflow store: an existing sqlite store opens much faster than a new one.
    overrides = [f"ckpt_path={summary.artifact_dir}", "split=val", "batch_size=20", f"paths.mlflow_dir={root}/outputs/mlflow"]
    cfg = compose_train_config(tmp_path, data_dir, overrides, config_name="evaluate")
    result = run_evaluation(cfg)

    run_dir = tmp_path / "run"
    for name in ("pr_curves.png", "confusion_matrix.png", "samples.png"):
        _assert_png(run_dir / name)
    rows = json.loads((run_dir / "coco_results.json").read_text())
    assert {row["category_id"] for row in rows} <= set(SHAPE_IDS)
    val_json = data_dir / "shapes" / "val" / "_annotations.coco.json"
    assert {row["image_id"] for row in rows} == {image["id"] for image in json.loads(val_json.read_text())["images"]}
    assert len(rows) == per_image * 100  # every detection (no threshold) on each of the 100 validation images
    # The results json, evaluated by pycocotools itself, gives the printed numbers.
    _assert_same_numbers(result.metrics, _pycocotools_eval(val_json, run_dir / "coco_results.json"),
                         [Category(i, n) for i, n in SHAPE_IDS.items()])  # fmt: skip

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cvexp-evaluate").experiment_id])
    assert run.info.run_id == result.mlflow_run_id and run.info.status == "FINISHED"
    assert run.data.metrics["val/map"] == pytest.approx(result.metrics["map"])
    assert {"val/map_50", "val/mar_100", "val/ap/circle", "val/ap/triangle"} <= set(run.data.metrics)
    assert run.data.params["split"] == "val"
    assert {"config.yaml", "evaluation/coco_results.json", "evaluation/metrics.json", "evaluation/pr_curves.png",
            "evaluation/confusion_matrix.png", "evaluation/samples.png"} <= set(_artifact_paths(client, run.info.run_id))  # fmt: skip


def test_predict_on_a_glob_numbers_images_and_renders(trained, tmp_path: Path) -> None:
    root, data_dir, summary, per_image = trained
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((data_dir / "shapes" / "test").glob("*.png"))[:3]:
        shutil.copy(source, images / source.name)
    (images / "notes.txt").write_text("not an image")
    cfg = compose_train_config(tmp_path, data_dir, [f"ckpt_path={summary.best_model_path}", f"inputs={images}/*",
                                                     "render=true", "render_score_threshold=0"], config_name="predict")  # fmt: skip
    result = run_prediction(cfg)

    rows = json.loads(result.results_path.read_text())
    assert result.num_images == 3 and len(rows) == result.num_predictions == 3 * per_image
    names = sorted(p.name for p in images.glob("*.png"))
    assert {(row["image_id"], Path(row["file_name"]).name) for row in rows} == {(i + 1, name) for i, name in enumerate(names)}
    assert {row["category_id"] for row in rows} <= set(SHAPE_IDS)
    assert [image["id"] for image in json.loads(result.images_path.read_text())] == [1, 2, 3]
    assert len(result.rendered) == 3
    for path in result.rendered:
        _assert_png(path)


def test_predict_command_line_on_a_coco_split(trained, tmp_path: Path) -> None:
    """``python -m cvexp.predict`` as a user runs it: the split's image ids, every detection, under outputs/runs/predict/."""
    root, data_dir, summary, per_image = trained
    split = data_dir / "shapes" / "test"
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cvexp.predict", f"ckpt_path={summary.artifact_dir}", f"inputs={split}",
                             "batch_size=16"], cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs" / "predict").iterdir()
    rows = json.loads((run_dir / "predictions.json").read_text())
    ground_truth = json.loads((split / "_annotations.coco.json").read_text())
    assert {row["image_id"] for row in rows} == {image["id"] for image in ground_truth["images"]}
    assert len(rows) == per_image * len(ground_truth["images"])
    assert f"{len(rows)} predictions on {len(ground_truth['images'])} images" in result.stdout
    with contextlib.redirect_stdout(io.StringIO()):  # the file is a results json pycocotools loads
        coco_gt = PyCOCO(str(split / "_annotations.coco.json"))
        assert len(coco_gt.loadRes(str(run_dir / "predictions.json")).anns) == len(rows)


@needs_rbc
def test_evaluate_trained_rbc_model_equals_pycocotools(tmp_path: Path) -> None:
    """A model trained for a few steps on RBC cells: the evaluation of its checkpoint is pycocotools-exact."""
    overrides = ["data=rbc_cells", f"data.root={RBC_CELLS}", "data.image_size=128", "data.num_workers=0", "debug=smoke",
                 "trainer.max_epochs=1", "logger=none", "test_after_fit=false"]  # fmt: skip
    summary = run_training(compose_train_config(tmp_path / "train", tmp_path, overrides))
    cfg = compose_train_config(tmp_path, tmp_path, [f"ckpt_path={summary.best_model_path}", "logger=none"], config_name="evaluate")
    result = run_evaluation(cfg)

    rows = json.loads(result.files["results"].read_text())
    assert rows and {row["category_id"] for row in rows} <= {1, 2}
    categories = [Category(1, "rbc"), Category(2, "wbc")]
    _assert_same_numbers(result.metrics, _pycocotools_eval(RBC_CELLS / "test" / "_annotations.coco.json", result.files["results"]), categories)
    assert result.mlflow_run_id is None
