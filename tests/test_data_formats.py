"""YOLO, Pascal VOC and Hugging Face datasets read as COCO: the same samples from every layout, the same checks, conversion both ways.

One small dataset (PNG images with integer boxes, one image without objects, a box on the border)
is written in the four layouts; every reader must give the same samples. Each layout's own kinds
of damage must raise a named error or be skipped and counted, as COCO damage is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cvexp.data import CocoDetectionDataset, DatasetError, HfDetectionDataset, VocDetectionDataset, YoloDetectionDataset
from cvexp.data.formats.coco import write_coco
from cvexp.data.formats.yolo import write_yolo
from cvexp.paths import CONFIG_DIR
from tests.conftest import RBC_CELLS, needs_rbc

CLASSES = ["cat", "dog"]
# (file name, width, height, [(class index, x, y, w, h)]): integer pixel boxes, so that VOC's integer corners hold them exactly.
IMAGES = [
    ("a.png", 64, 48, [(0, 4, 6, 20, 10), (1, 30, 20, 34, 28)]),  # the second touches the right and bottom borders
    ("b.png", 40, 40, []),  # an image without objects
    ("c.png", 50, 30, [(1, 0, 0, 10, 12)]),
    ("d.png", 32, 64, [(0, 5, 5, 5, 5), (0, 10, 30, 12, 20), (1, 1, 40, 30, 20)]),
]


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for name, width, height, _ in IMAGES:
        Image.fromarray(generator.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)


def coco_content() -> dict:
    images, annotations = [], []
    for image_id, (name, width, height, boxes) in enumerate(IMAGES):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for c, x, y, w, h in boxes:
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}


def write_coco_layout(root: Path) -> Path:
    _write_images(root / "train")
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(coco_content()))
    return root / "train"


def write_voc_layout(root: Path, difficult: set[tuple[int, int]] = frozenset()) -> Path:
    """VOC's 1-based inclusive corners: a box from pixel x covering w pixels is xmin = x + 1, xmax = x + w."""
    _write_images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_index, (name, width, height, boxes) in enumerate(IMAGES):
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><difficult>{int((image_index, i) in difficult)}</difficult>"
            f"<bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
            for i, (c, x, y, w, h) in enumerate(boxes)
        )
        xml = f"<annotation><filename>{name}</filename><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{Path(name).stem}\n" for name, *_ in IMAGES))
    return root


def hf_dataset(root: Path):
    import datasets

    _write_images(root / "src")
    features = datasets.Features({
        "image_id": datasets.Value("int64"), "image": datasets.Image(), "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": {"id": datasets.List(datasets.Value("int64")), "area": datasets.List(datasets.Value("float32")),
                    "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=CLASSES))},
    })  # fmt: skip
    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for image_id, (name, width, height, boxes) in enumerate(IMAGES):
        rows["image_id"].append(image_id)
        rows["image"].append({"bytes": (root / "src" / name).read_bytes(), "path": name})
        rows["width"].append(width)
        rows["height"].append(height)
        rows["objects"].append({"id": list(range(len(boxes))), "area": [w * h for _, _, _, w, h in boxes],
                                "bbox": [[x, y, w, h] for _, x, y, w, h in boxes], "category": [c for c, *_ in boxes]})  # fmt: skip
    return datasets.Dataset.from_dict(rows, features=features)


def write_hf_layout(root: Path) -> Path:
    import datasets

    datasets.DatasetDict(train=hf_dataset(root)).save_to_disk(str(root / "saved"))
    return root / "saved"


@pytest.fixture
def four_layouts(tmp_path: Path) -> dict[str, CocoDetectionDataset]:
    """The same split read from COCO, YOLO, VOC and a Hugging Face dataset (on disk and as parquet)."""
    coco_dir = write_coco_layout(tmp_path / "coco")
    data_yaml = write_yolo({"train": (coco_content(), coco_dir)}, tmp_path / "yolo")
    voc_dir = write_voc_layout(tmp_path / "voc")
    hf_dir = write_hf_layout(tmp_path / "hf")
    hf_dataset(tmp_path / "hf_parquet").to_parquet(str(tmp_path / "hf_parquet" / "train.parquet"))
    return {
        "coco": CocoDetectionDataset(str(coco_dir)),
        "yolo": YoloDetectionDataset(str(data_yaml), "train"),
        "voc": VocDetectionDataset(str(voc_dir), "train", classes=CLASSES),
        "hf_datasets": HfDetectionDataset("train", dataset_dir=str(hf_dir), images_cache_dir=str(tmp_path / "cache")),
        "hf_parquet": HfDetectionDataset(parquet_file=str(tmp_path / "hf_parquet" / "train.parquet"), images_cache_dir=str(tmp_path / "cache")),
    }


def test_every_reader_yields_the_same_samples(four_layouts: dict[str, CocoDetectionDataset]) -> None:
    reference = four_layouts["coco"]
    assert len(reference) == len(IMAGES) and reference.report.annotations_kept == sum(len(b) for *_, b in IMAGES)
    for layout, dataset in four_layouts.items():
        assert [c.name for c in dataset.label_map.categories] == CLASSES, layout
        assert len(dataset) == len(reference), layout
        assert dataset.report.boxes_clipped == 0 and not dataset.report.dropped, (layout, dataset.report)
        for index in range(len(reference)):
            expected, sample = reference[index], dataset[index]
            assert np.array_equal(sample.image, expected.image), (layout, index)
            assert sample.target.image_id == expected.target.image_id and sample.target.size == expected.target.size, (layout, index)
            torch.testing.assert_close(sample.target.boxes, expected.target.boxes, atol=1e-3, rtol=0, msg=f"{layout} image {index}")
            assert torch.equal(sample.target.category_ids, expected.target.category_ids), (layout, index)
            assert torch.equal(sample.target.iscrowd, expected.target.iscrowd), (layout, index)
            torch.testing.assert_close(sample.target.area, expected.target.area, atol=0.05, rtol=0)


def test_voc_corners_are_one_based_inclusive_and_difficult_objects_are_crowd(tmp_path: Path) -> None:
    dataset = VocDetectionDataset(str(write_voc_layout(tmp_path, difficult={(0, 1)})), "train", classes=CLASSES)
    xml = (tmp_path / "Annotations" / "a.xml").read_text()
    assert "<xmin>5</xmin><ymin>7</ymin><xmax>24</xmax><ymax>16</ymax>" in xml  # pixels 5..24 (1-based) = 20 pixels from x=4
    target = dataset[0].target
    assert target.boxes.tolist() == [[4.0, 6.0, 20.0, 10.0], [30.0, 20.0, 34.0, 28.0]]
    assert target.iscrowd.tolist() == [0, 1]


def _yolo_split(tmp_path: Path, labels: dict[str, str], listed: list[str] | None = None) -> Path:
    """A YOLO split of the IMAGES with the given label file contents; ``listed`` writes a list file naming those images."""
    _write_images(tmp_path / "images" / "train")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    for name, text in labels.items():
        (tmp_path / "labels" / "train" / f"{Path(name).stem}.txt").write_text(text)
    split = "images/train"
    if listed is not None:
        (tmp_path / "train.txt").write_text("".join(f"./images/train/{name}\n" for name in listed))
        split = "train.txt"
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"names": CLASSES, "train": split}))
    return tmp_path / "data.yaml"


# (layout, damage, the problem kind it must be named by, the file the message must name)
DAMAGE = {
    "yolo: wrong number of fields": ("yolo", {"a.png": "0 0.5 0.5 0.2\n1 0.5 0.5 0.2 0.2\n"}, None, "label line malformed", "a.txt"),
    "yolo: class index outside names": ("yolo", {"a.png": "2 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"}, None, "class index outside names", "a.txt"),
    "yolo: coordinates outside [0, 1]": ("yolo", {"a.png": "0 1.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"}, None, "label coordinates outside [0, 1]", "a.txt"),
    "yolo: not numbers": ("yolo", {"a.png": "0 x 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"}, None, "label values not numbers", "a.txt"),
    "yolo: listed image missing": ("yolo", {"a.png": "1 0.5 0.5 0.2 0.2\n"}, ["a.png", "gone.png"], "image file missing", "data.yaml"),
    "voc: XML without size": ("voc", "a", "size", "XML without size", "a.xml"),
    "voc: image missing": ("voc", "a", "image", "image file missing", "train.txt"),
    "voc: class not in classes": ("voc", "a", "class", "class not in data.dataset.classes", "a.xml"),
    "voc: size differs from the file": ("voc", "a", "wrong size", "image size differs from the file", "a.xml"),
}


def _damaged(tmp_path: Path, case: tuple, on_invalid: str) -> CocoDetectionDataset:
    layout, damage, listed, *_ = case
    if layout == "yolo":
        return YoloDetectionDataset(str(_yolo_split(tmp_path, damage, listed)), "train", on_invalid=on_invalid)
    root = write_voc_layout(tmp_path)
    xml = root / "Annotations" / "a.xml"
    if listed == "size":
        xml.write_text(xml.read_text().replace("<size><width>64</width><height>48</height><depth>3</depth></size>", ""))
    elif listed == "image":
        (root / "JPEGImages" / "a.png").unlink()
    elif listed == "class":
        xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>bird</name>", 1))
    else:
        xml.write_text(xml.read_text().replace("<width>64</width>", "<width>65</width>"))
    return VocDetectionDataset(str(root), "train", classes=CLASSES, on_invalid=on_invalid)


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damage_of_each_layout_is_named_or_skipped_and_counted(tmp_path: Path, name: str) -> None:
    case = DAMAGE[name]
    kind, file = case[3], case[4]
    with pytest.raises(DatasetError) as raised:
        _damaged(tmp_path / "raise", case, "raise")
    message = str(raised.value)
    assert file in message and "data.on_invalid=skip" in message, message
    with pytest.warns(UserWarning, match="dropped"):
        dataset = _damaged(tmp_path / "skip", case, "skip")
    report = dataset.report
    assert report.counts.get(kind, 0) >= 1, report.counts
    assert report.images_kept == len(dataset) >= 1
    # Every record accounted for: what was kept and what was dropped add up to what the layout holds.
    assert report.annotations_kept + report.annotations - report.annotations_kept == report.annotations
    assert report.annotations_kept == sum(len(annotations) for annotations in dataset._annotations.values())
    assert report.annotations - report.annotations_kept == sum(p.kind not in _IMAGE_KINDS for p in report.dropped)


_IMAGE_KINDS = {"image file missing", "XML without size", "image size differs from the file"}


def test_a_yolo_folder_split_reads_missing_and_empty_label_files_as_images_without_objects(tmp_path: Path) -> None:
    data_yaml = _yolo_split(tmp_path, {"a.png": "0 0.5 0.5 0.25 0.5\n", "b.png": ""})  # c.png, d.png: no label file
    dataset = YoloDetectionDataset(str(data_yaml), "train")
    assert [dataset.images[i]["file_name"] for i in dataset.image_ids] == [f"images/train/{n}" for n, *_ in IMAGES]  # sorted paths
    assert [len(dataset[i].target.boxes) for i in range(len(dataset))] == [1, 0, 0, 0]
    assert dataset[0].target.boxes.tolist() == [[24.0, 12.0, 16.0, 24.0]]


def test_a_yolo_data_yaml_without_names_or_split_is_a_named_error(tmp_path: Path) -> None:
    data_yaml = _yolo_split(tmp_path, {})
    data_yaml.write_text(yaml.safe_dump({"train": "images/train"}))
    with pytest.raises(DatasetError, match="'names'"):
        YoloDetectionDataset(str(data_yaml), "train")
    data_yaml.write_text(yaml.safe_dump({"names": CLASSES, "train": "images/train"}))
    with pytest.raises(DatasetError, match="no 'val' entry.*data.val=null"):
        YoloDetectionDataset(str(data_yaml), "val")


def test_coco_written_back_reads_as_the_same_samples(four_layouts: dict[str, CocoDetectionDataset], tmp_path: Path) -> None:
    yolo = four_layouts["yolo"]
    write_coco({"train": (yolo.coco_content(), yolo.images_dir)}, tmp_path / "back")
    back = CocoDetectionDataset(str(tmp_path / "back" / "train"))
    for index in range(len(back)):
        assert np.array_equal(back[index].image, yolo[index].image)
        assert torch.equal(back[index].target.boxes, yolo[index].target.boxes)


@needs_rbc
def test_rbc_cells_round_trip_through_yolo_gives_back_the_same_boxes(tmp_path: Path) -> None:
    """COCO -> YOLO -> COCO with the command line, the boxes compared image by image (names kept, ids now the YOLO class indices)."""
    command = [sys.executable, "-m", "cvexp.convert", "data=rbc_cells", f"data.root={RBC_CELLS}", f"hydra.run.dir={tmp_path}/hydra"]
    subprocess.run([*command, "convert_to=yolo", f"out={tmp_path}/yolo"], check=True, capture_output=True)
    back = [sys.executable, "-m", "cvexp.convert", "data=yolo", f"data.root={tmp_path}/yolo", "+data.test={data_file:data.yaml,split:test}",
            f"out={tmp_path}/back", f"hydra.run.dir={tmp_path}/hydra2"]  # fmt: skip
    subprocess.run(back, check=True, capture_output=True)
    for original, converted in (("train", "train"), ("valid", "val"), ("test", "test")):
        source = json.loads((RBC_CELLS / original / "_annotations.coco.json").read_text())
        result = json.loads((tmp_path / "back" / converted / "_annotations.coco.json").read_text())
        names = {c["id"]: c["name"] for c in source["categories"]}
        assert [c["name"] for c in result["categories"]] == ["rbc", "wbc"]  # the supercategory without boxes is not a YOLO class
        result_names = {c["id"]: c["name"] for c in result["categories"]}

        def boxes(content: dict, class_names: dict) -> dict[str, list]:
            files = {image["id"]: Path(image["file_name"]).name for image in content["images"]}
            grouped: dict[str, list] = {name: [] for name in files.values()}
            for a in content["annotations"]:
                grouped[files[a["image_id"]]].append((class_names[a["category_id"]], *a["bbox"]))
            return grouped

        expected, got = boxes(source, names), boxes(result, result_names)
        assert expected.keys() == got.keys()
        for file in expected:
            assert [b[0] for b in got[file]] == [b[0] for b in expected[file]], file
            np.testing.assert_allclose([b[1:] for b in got[file]], [b[1:] for b in expected[file]], atol=1e-3, rtol=0) if expected[file] else None


@pytest.mark.parametrize("layout", ["yolo", "voc", "hf_datasets"])
def test_training_smoke_on_each_layout(layout: str, tmp_path: Path, train_config) -> None:
    from cvexp.training import run_training

    root = {"yolo": lambda: write_yolo({"train": (coco_content(), write_coco_layout(tmp_path / "coco"))}, tmp_path / "yolo").parent,
            "voc": lambda: write_voc_layout(tmp_path / "voc"), "hf_datasets": lambda: write_hf_layout(tmp_path / "hf")}[layout]()  # fmt: skip
    validation = {"yolo": "data.val.split=train", "voc": "data.val.image_set=train", "hf_datasets": "data.val.split=train"}[layout]
    extra = ["data.dataset.classes=[cat,dog]"] if layout == "voc" else []
    cfg = train_config([f"data={layout}", f"data.root={root}", validation, "data.image_size=64", "debug=smoke", "logger=none",
                        "test_after_fit=false", *extra])  # fmt: skip
    summary = run_training(cfg)
    assert Path(summary.best_model_path).is_file()
    assert summary.val_metrics and "map" in summary.val_metrics
    stored = json.loads((summary.artifact_dir / "cvexp.json").read_text())
    assert "cat" in json.dumps(stored) and "dog" in json.dumps(stored)


def test_convert_writes_coco_that_data_coco_reads(tmp_path: Path) -> None:
    voc = write_voc_layout(tmp_path / "voc")
    command = [sys.executable, "-m", "cvexp.convert", "data=voc", f"data.root={voc}", "data.dataset.classes=[cat,dog]", "data.val=null",
               f"out={tmp_path}/coco", f"hydra.run.dir={tmp_path}/hydra"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=CONFIG_DIR.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 4 images, 6 annotations" in result.stdout
    converted = CocoDetectionDataset(str(tmp_path / "coco" / "train"))
    assert [c.name for c in converted.label_map.categories] == CLASSES
    assert converted.report.annotations_kept == 6
    refused = subprocess.run(command, capture_output=True, text=True, cwd=CONFIG_DIR.parent)
    assert refused.returncode != 0 and "is not empty" in refused.stderr + refused.stdout


@needs_rbc
@pytest.mark.long  # two trainings on RBC cells (1 min): make test-long; CI checks the boxes of the round trip (above)
def test_training_on_the_yolo_copy_of_rbc_logs_the_losses_of_the_original(tmp_path: Path, train_config) -> None:
    """Same seed, same settings, the same samples: the first 20 training losses agree (the boxes differ by YOLO's rounding, < 1e-3 px)."""
    from mlflow.tracking import MlflowClient

    from cvexp.training import run_training

    write_yolo({name: (dataset.coco_content(), dataset.images_dir)
                for name, dataset in (("train", CocoDetectionDataset(str(RBC_CELLS / "train"))), ("val", CocoDetectionDataset(str(RBC_CELLS / "valid"))))},
               tmp_path / "yolo")  # fmt: skip
    settings = ["trainer.max_epochs=1", "+trainer.limit_train_batches=20", "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
                "data.num_workers=0", "data.batch_size=4", "num_threads=1", "test_after_fit=false", "seed=7"]  # fmt: skip
    losses = {}
    for name, data in (("coco", ["data=rbc_cells", f"data.root={RBC_CELLS}"]), ("yolo", ["data=yolo", f"data.root={tmp_path / 'yolo'}"])):
        cfg = train_config([*data, *settings, f"paths.output_dir={tmp_path}/{name}", "data.image_size=416"])
        summary = run_training(cfg)
        history = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_metric_history(summary.mlflow_run_id, "train/loss_step")
        losses[name] = [metric.value for metric in sorted(history, key=lambda metric: metric.step)]
    assert len(losses["coco"]) == 20, losses
    np.testing.assert_allclose(losses["yolo"], losses["coco"], rtol=1e-4)
