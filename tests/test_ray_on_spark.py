"""``trainer=ray_on_spark`` and ``cvexp.predict engine=ray ray=spark`` on a real Spark standalone cluster (127.0.0.1).

A master and a 2-core worker start from the pyspark package (Java 17 from the system); each job starts
Ray on them with ``ray.util.spark.setup_ray_cluster`` (the Ray worker node runs inside the Spark
executor), runs, and shuts Ray and its SparkSession down; no Spark or Ray process is left afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from cvexp.inference.prediction import run_prediction
from cvexp.training import run_training
from tests.conftest import compose_train_config, running_processes

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="pyspark is not installed (make test-spark installs it)"),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java, and there is no java on PATH"),
]


def test_train_and_predict_through_ray_on_spark(tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.spark_standalone import spark_standalone

    before = {name: running_processes(name) for name in ("raylet", "gcs_server", "java")}
    with spark_standalone(monkeypatch) as spark:
        train = compose_train_config(tmp_path / "train", shared_data_dir, [
            "trainer=ray_on_spark", "debug=smoke", "logger=none", "trainer.num_workers=1", "ray.num_cpus_worker_node=2",
            *spark.overrides()])  # fmt: skip
        summary = run_training(train)
        assert summary.best_model_path and Path(summary.best_model_path).is_file()
        assert summary.test_metrics, "the checkpoint the Spark-hosted worker wrote was not tested on the driver"

        split = shared_data_dir / "shapes" / "test"
        predict = compose_train_config(tmp_path / "predict", shared_data_dir, [
            f"ckpt_path={summary.artifact_dir}", f"inputs={split}", "engine=ray", "ray=spark", "engine.num_actors=1",
            "ray.num_cpus_worker_node=2", *spark.overrides()], config_name="predict")  # fmt: skip
        result = run_prediction(predict)
        images = json.loads((split / "_annotations.coco.json").read_text())["images"]
        assert result.num_images == len(images) and result.num_predictions > 0
        assert {row["image_id"] for row in json.loads(result.results_path.read_text())} == {image["id"] for image in images}
    # Ray's head and worker node, the SparkSession's JVM, the master and the worker: all gone (Ray's head
    # stops a second or two after shutdown_ray_cluster returns)
    deadline = time.monotonic() + 60
    while (left := {name: running_processes(name) for name in before}) != before and time.monotonic() < deadline:
        time.sleep(1)
    assert left == before
