"""``python -m cvexp.inspect``: its numbers against an independent count of the raw files, copies and problems
found, the files it writes, and its MLflow run.

The expected numbers are counted here from the annotation files and image bytes themselves, with
plain json, hashlib and numpy: never from cvexp's readers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cvexp.data import CocoDetectionDataset, VisionDataModule
from cvexp.data.inspection import data_summary, inspect_dataset
from cvexp.data.inspection_report import INSPECTION_FILE, PLOTS, SAMPLES_FILE, run_inspection
from cvexp.data.shapes import ANNOTATION_FILE
from cvexp.errors import ConfigError
from cvexp.paths import CONFIG_DIR
from tests.conftest import RBC_CELLS, compose_train_config, needs_rbc

# COCO's object-size limits, by area (its definition, not a count).
COCO_SMALL_AREA, COCO_LARGE_AREA = 32**2, 96**2


def independent_count(images_dir: Path, annotation_file: Path) -> dict[str, Any]:
    """A split counted from its raw COCO json and image files, with json, hashlib and numpy only."""
    content = json.loads(annotation_file.read_text())
    annotations = content["annotations"]
    per_image = Counter(a["image_id"] for a in annotations)
    boxes = np.array([a["bbox"] for a in annotations], dtype=float).reshape(-1, 4)
    area = boxes[:, 2] * boxes[:, 3]
    small, large = int((area < COCO_SMALL_AREA).sum()), int((area >= COCO_LARGE_AREA).sum())
    hashes: dict[str, list[str]] = {}
    for image in content["images"]:
        hashes.setdefault(hashlib.sha1((images_dir / image["file_name"]).read_bytes()).hexdigest(), []).append(image["file_name"])
    return {
        "images": len(content["images"]),
        "annotations": len(annotations),
        "per_class": Counter(a["category_id"] for a in annotations),
        "images_per_class": {c: len({a["image_id"] for a in annotations if a["category_id"] == c}) for c in {a["category_id"] for a in annotations}},
        "max_objects": max((per_image[image["id"]] for image in content["images"]), default=0),
        "sizes": {"small": small, "medium": len(area) - small - large, "large": large},
        "image_sizes": dict(Counter(f"{image['width']}x{image['height']}" for image in content["images"])),
        "hashes": hashes,
    }


def duplicate_groups(groups: list[list[dict[str, Any]]]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset((ref["split"], ref["file_name"]) for ref in group) for group in groups}


@pytest.fixture
def inspect_config(tmp_path: Path, shared_data_dir: Path):
    """A factory: ``inspect_config(["data=rbc_cells", ...])`` -> conf/inspect.yaml composed, every path under ``tmp_path``."""

    def factory(overrides: list[str]) -> Any:
        return compose_train_config(tmp_path, shared_data_dir, overrides, config_name="inspect")

    yield factory
    GlobalHydra.instance().clear()


@needs_rbc
def test_rbc_cells_numbers_equal_an_independent_count(inspect_config, tmp_path: Path) -> None:
    cfg = inspect_config(["data=rbc_cells", f"data.root={RBC_CELLS}", "logger=none", "samples=4"])
    run_inspection(cfg)
    report = json.loads((tmp_path / "run" / INSPECTION_FILE).read_text())

    expected = {name: independent_count(RBC_CELLS / cfg.data[name].images_dir, RBC_CELLS / cfg.data[name].images_dir / ANNOTATION_FILE)
                for name in ("train", "val", "test")}  # fmt: skip
    # The classes are the categories with boxes: the export's category 0 (RBC-WBC) is only their supercategory.
    with_boxes = sorted({c for count in expected.values() for c in count["per_class"]})
    raw_categories = json.loads((RBC_CELLS / cfg.data.train.images_dir / ANNOTATION_FILE).read_text())["categories"]
    assert [c["id"] for c in report["classes"]] == with_boxes
    assert len(with_boxes) < len(raw_categories), "the supercategory without boxes is not a class"
    assert set(report["splits"]) == set(expected)
    for name, count in expected.items():
        split = report["splits"][name]
        assert split["images"] == count["images"]
        assert split["annotations"] == count["annotations"]
        assert {c["id"]: c["annotations"] for c in split["classes"].values()} == {c: count["per_class"].get(c, 0) for c in with_boxes}
        assert {c["id"]: c["images"] for c in split["classes"].values()} == {c: count["images_per_class"].get(c, 0) for c in with_boxes}
        assert split["objects_per_image"]["max"] == count["max_objects"]
        assert sum(split["objects_per_image"]["histogram"].values()) == count["images"]
        assert {k: split["box_size"][k] for k in ("small", "medium", "large")} == count["sizes"]
        assert split["image_sizes"]["counts"] == count["image_sizes"]
        within = [sorted(names) for names in count["hashes"].values() if len(names) > 1]
        assert sorted(sorted(ref["file_name"] for ref in group) for group in split["duplicates"]) == sorted(within)
    pooled: dict[str, set[tuple[str, str]]] = {}
    for name, count in expected.items():
        for digest, names in count["hashes"].items():
            pooled.setdefault(digest, set()).update((name, n) for n in names)
    across = {frozenset(refs) for refs in pooled.values() if len({split for split, _ in refs}) > 1}
    assert duplicate_groups(report["cross_split_duplicates"]) == across
    most = max(count["max_objects"] for count in expected.values())
    queries = next(s for s in report["suggestions"] if s["setting"] == "model.config.num_queries")
    assert queries["value"] >= most and str(most) in queries["reason"]


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def damaged_dataset(root: Path) -> dict[str, Any]:
    """A train and a val split: one train image copied under a second name, one train image copied into val
    (leakage), and one annotation with a bbox that is not numbers. Returns what was written."""
    train, val = root / "train", root / "val"
    for index, name in enumerate(("a.png", "c.png", "d.png")):
        write_image(train / name, (40 * index, 200, 90))
    shutil.copyfile(train / "a.png", train / "b.png")  # the same bytes under another name
    write_image(val / "e.png", (10, 10, 250))
    shutil.copyfile(train / "c.png", val / "f.png")  # a training image in val
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]

    def split(names: list[str], boxes: list[tuple[int, list[Any], int]]) -> dict[str, Any]:
        images = [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)]
        annotations = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0} for k, (i, b, c) in enumerate(boxes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    bad = [1, "x", 5, 5]
    contents = {
        "train": split(["a.png", "b.png", "c.png", "d.png"], [(0, [2, 2, 10, 10], 1), (1, [2, 2, 10, 10], 1), (2, [5, 5, 40, 30], 2),
                                                              (3, [0, 0, 20, 20], 1), (3, bad, 1)]),
        "val": split(["e.png", "f.png"], [(0, [1, 1, 30, 20], 1), (1, [5, 5, 40, 30], 2)]),
    }  # fmt: skip
    for name, content in contents.items():
        (root / name / ANNOTATION_FILE).write_text(json.dumps(content))
    return {"contents": contents, "bad": bad, "bad_records": [a for a in contents["train"]["annotations"] if a["bbox"] == bad],
            "copies": [("train", "a.png"), ("train", "b.png")],
            "leak": [("train", "c.png"), ("val", "f.png")]}  # fmt: skip


def data_overrides(root: Path) -> list[str]:
    return ["data=coco", f"data.root={root}", "data.train.images_dir=train", "data.val.images_dir=val", "data.image_size=64"]


def test_copies_and_dropped_records_are_listed(tmp_path: Path) -> None:
    written = damaged_dataset(tmp_path / "data")
    datamodule = VisionDataModule(CocoDetectionDataset, train={"images_dir": "train"}, val={"images_dir": "val"}, root=str(tmp_path / "data"),
                                  image_size=64, on_invalid="skip")  # fmt: skip
    with pytest.warns(UserWarning, match="bbox not numeric"):  # validation's own word on what it skipped
        inspection = inspect_dataset(datamodule)
    report = inspection.to_dict()

    assert duplicate_groups(report["splits"]["train"]["duplicates"]) == {frozenset(written["copies"])}
    assert report["splits"]["val"]["duplicates"] == []
    assert duplicate_groups(report["cross_split_duplicates"]) == {frozenset(written["leak"])}
    assert any("leakage" in warning for warning in report["warnings"])
    dropped = report["splits"]["train"]["validation"]["dropped"]
    assert [problem["kind"] for problem in dropped] == ["bbox not numeric"]
    assert str(written["bad"]) in dropped[0]["text"] and ANNOTATION_FILE in dropped[0]["text"]
    kept = [a for a in written["contents"]["train"]["annotations"] if a["bbox"] != written["bad"]]
    assert report["splits"]["train"]["annotations"] == len(kept)
    assert report["splits"]["train"]["validation"]["annotations"] == len(written["contents"]["train"]["annotations"])
    # The start-of-training summary: one row per split, no file read for copies.
    table = data_summary(datamodule)
    assert table is not None and table.row_count == len(report["splits"])


def test_command_line_writes_the_json_and_plots(tmp_path: Path) -> None:
    written = damaged_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "cvexp.inspect", *data_overrides(tmp_path / "data"), "logger=none", "samples=3",
               f"hydra.run.dir={run_dir}", f"paths.root_dir={tmp_path}/root"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in (INSPECTION_FILE, SAMPLES_FILE, *(f"{plot}.png" for plot in PLOTS)):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    with Image.open(run_dir / SAMPLES_FILE) as image:
        assert image.format == "PNG"
    report = json.loads((run_dir / INSPECTION_FILE).read_text())
    # data=coco says on_invalid=raise: the inspection still lists the bad record, and says that training would stop at it.
    assert report["on_invalid"] == "raise"
    assert [p["kind"] for p in report["splits"]["train"]["validation"]["dropped"]] == ["bbox not numeric"]
    assert any("training stops at the first" in warning for warning in report["warnings"])
    assert report["splits"]["val"]["images"] == len(written["contents"]["val"]["images"])
    assert "data: splits" in result.stdout and "bbox not numeric" in result.stdout


@pytest.mark.filterwarnings("ignore:.*data.on_invalid=skip dropped:UserWarning")
def test_logs_a_run_to_mlflow(inspect_config, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    written = damaged_dataset(tmp_path / "data")
    cfg = inspect_config([*data_overrides(tmp_path / "data"), "samples=2"])
    inspection = run_inspection(cfg)

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    assert cfg.logger.tracking_uri.startswith(f"sqlite:///{tmp_path}")
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["val/images"] == len(written["contents"]["val"]["images"])
    assert run.data.metrics["train/problems"] == len(written["bad_records"])
    assert run.data.metrics["cross_split_duplicates"] == len(written["leak"])
    assert run.data.params["suggested.model.config.num_queries"] == str(inspection.suggestions[0].value)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "inspection")}
    assert {f"inspection/{name}" for name in (INSPECTION_FILE, SAMPLES_FILE, *(f"{plot}.png" for plot in PLOTS))} <= artifacts


def test_data_without_boxes_is_refused_with_a_clear_error(inspect_config, tmp_path: Path) -> None:
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            write_image(tmp_path / "folders" / split / name / "1.png", (len(name) * 30, 90, 20))
    cfg = inspect_config(["data=image_folder", f"data.root={tmp_path}/folders", "logger=none"])
    with pytest.raises(ConfigError, match="summarises detection data"):
        run_inspection(cfg)


@pytest.mark.filterwarnings("ignore:.*data.on_invalid=skip dropped:UserWarning")
def test_suggests_the_smallest_image_size_that_lifts_small_boxes_to_a_feature_cell(tmp_path: Path) -> None:
    from cvexp.data.inspection import FEATURE_STRIDE, SIZE_MULTIPLE

    written = damaged_dataset(tmp_path / "data")
    # Each kept box's shorter side relative to its image's longer side, from the raw records.
    relative = [min(a["bbox"][2:]) / max(image["width"], image["height"])
                for content in written["contents"].values() for image in content["images"]
                for a in content["annotations"] if a["image_id"] == image["id"] and a["bbox"] != written["bad"]]  # fmt: skip
    low = float(np.percentile(relative, 5))

    def suggested(image_size: int) -> int | None:
        datamodule = VisionDataModule(CocoDetectionDataset, train={"images_dir": "train"}, val={"images_dir": "val"},
                                      root=str(tmp_path / "data"), image_size=image_size, on_invalid="skip")  # fmt: skip
        return next((s.value for s in inspect_dataset(datamodule, duplicates=False).suggestions if s.setting == "data.image_size"), None)

    too_small = SIZE_MULTIPLE * math.floor(FEATURE_STRIDE / low / SIZE_MULTIPLE)  # the p5 box is under one cell at this size
    size = suggested(too_small)
    assert size is not None and size % SIZE_MULTIPLE == 0
    assert size * low >= FEATURE_STRIDE > (size - SIZE_MULTIPLE) * low, "the smallest multiple that reaches a feature cell"
    assert suggested(size) is None, "no suggestion once the setting is enough"
