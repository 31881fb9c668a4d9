"""``cvexp.predict`` engines and inputs: Ray Data actors give the results the local engine gives; parquet in and out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvexp.inference.prediction import run_prediction
from tests.conftest import compose_train_config, running_processes

NUM_IMAGES = 20


@pytest.fixture(scope="module")
def images(smoke_artifact: Path, shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 20 of the shapes test images (numbered 1..20 by name)."""
    folder = tmp_path_factory.mktemp("images")
    for source in sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[:NUM_IMAGES]:
        shutil.copy(source, folder / source.name)
    return folder


def _predict(tmp_path: Path, artifact: Path, inputs: Path | str, *overrides: str):
    # One torch thread, as in a 1-CPU Ray actor: the same arithmetic, so the same top-k among near-equal scores.
    cfg = compose_train_config(tmp_path, tmp_path, [f"ckpt_path={artifact}", f"inputs={inputs}", "batch_size=4", "num_threads=1",
                                                    *overrides], config_name="predict")  # fmt: skip
    return run_prediction(cfg)


def _in_score_order(results: list[dict]) -> list[dict]:
    """Each image's predictions by score, ties by class and box. Ray's actors batch otherwise than the local engine (blocks
    of 5 images in batches of 4), which moves the scores in the last bits: two scores equal to the json's 5 digits can
    then come in either order."""
    return sorted(results, key=lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"]))


def _parquet_of(images: Path, path: Path, image_cell) -> Path:
    """The images as a parquet table: ``image_id``, ``file_name`` and an image column that ``image_cell(file)`` fills."""
    files = sorted(images.glob("*.png"))
    pq.write_table(pa.table({"image_id": list(range(1, len(files) + 1)), "file_name": [f.name for f in files],
                             "image": [image_cell(f) for f in files]}), path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def local_results(smoke_artifact: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The local engine's results json on the folder (the reference every other way must equal)."""
    summary = _predict(tmp_path_factory.mktemp("local"), smoke_artifact, images)
    assert summary.num_images == NUM_IMAGES and summary.num_predictions > 0
    return json.loads(summary.results_path.read_text())


@pytest.mark.parametrize("cell", ["bytes", "struct", "path"])
def test_parquet_inputs_give_the_folder_results(cell: str, smoke_artifact: Path, images: Path, local_results: list[dict],
                                                tmp_path: Path) -> None:  # fmt: skip
    """An image column of encoded bytes, of Hugging Face datasets' {bytes, path} structs, or of relative paths."""
    cells = {"bytes": lambda f: f.read_bytes(), "struct": lambda f: {"bytes": f.read_bytes(), "path": f.name},
             "path": lambda f: f.name}  # fmt: skip
    table = _parquet_of(images, tmp_path / "images.parquet", cells[cell])
    if cell == "path":  # relative to the parquet's folder
        for source in images.glob("*.png"):
            shutil.copy(source, tmp_path / source.name)
    summary = _predict(tmp_path, smoke_artifact, table)
    assert json.loads(summary.results_path.read_text()) == local_results


def test_parquet_output_holds_the_json_rows(smoke_artifact: Path, images: Path, local_results: list[dict], tmp_path: Path) -> None:
    summary = _predict(tmp_path, smoke_artifact, images, "output_format=parquet")
    assert summary.results_path.name == "predictions.parquet"
    rows = pq.read_table(summary.results_path).to_pylist()
    assert len(rows) == len(local_results) == summary.num_predictions
    for row, expected in zip(rows, local_results, strict=True):
        assert row.keys() == expected.keys() and row["image_id"] == expected["image_id"] and row["bbox"] == pytest.approx(expected["bbox"])


def test_parquet_without_the_id_column_names_the_setting(smoke_artifact: Path, images: Path, tmp_path: Path) -> None:
    table = tmp_path / "images.parquet"
    pq.write_table(pa.table({"img": [f.read_bytes() for f in sorted(images.glob("*.png"))[:2]]}), table)
    with pytest.raises(ValueError, match=r"no column 'image'.*parquet.image=<column>"):
        _predict(tmp_path, smoke_artifact, table)
    with pytest.raises(ValueError, match=r"no column 'image_id'.*parquet.image_id=<column>"):
        _predict(tmp_path, smoke_artifact, table, "parquet.image=img")


@pytest.mark.slow
def test_ray_engine_gives_the_local_results(smoke_artifact: Path, images: Path, local_results: list[dict], tmp_path: Path) -> None:
    """Two Ray Data actors on a fresh local cluster: on the folder, and on a parquet table they read themselves;
    the same results json as engine=local, in the same order, and no Ray process left afterwards."""
    raylets_before = running_processes("raylet")
    table = _parquet_of(images, tmp_path / "images.parquet", lambda f: f.read_bytes())
    ray_overrides = ["engine=ray", "engine.num_actors=2", "+ray.init.num_cpus=2", "+ray.init.include_dashboard=false"]
    on_folder = _predict(tmp_path / "folder", smoke_artifact, images, *ray_overrides, "render=true", "render_score_threshold=0")
    on_parquet = _predict(tmp_path / "parquet", smoke_artifact, table, *ray_overrides)
    for results in (json.loads(on_folder.results_path.read_text()), json.loads(on_parquet.results_path.read_text())):
        assert [r["image_id"] for r in results] == [r["image_id"] for r in local_results]  # the images in the same order
        assert _in_score_order(results) == _in_score_order(local_results)
    assert [image["id"] for image in json.loads(on_parquet.images_path.read_text())] == list(range(1, NUM_IMAGES + 1))
    assert len(on_folder.rendered) == NUM_IMAGES and all(path.stat().st_size > 0 for path in on_folder.rendered)
    assert running_processes("raylet") <= raylets_before  # the fresh local cluster is gone
