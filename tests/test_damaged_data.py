"""A corpus of damaged datasets, each under both policies: a named error or a counted skip, never a raw traceback or a silent loss.

Every case is a real split on disk (PNG images and a COCO json) with one kind of damage next to a
good record. With ``on_invalid=raise`` it must stop with a :class:`DatasetError` naming the file, the
record and the field; with ``on_invalid=skip`` it must drop exactly the damaged records, count them
by kind, and account for every record of the file (kept + dropped = all). Damage no skipping can
repair (a malformed file, an empty split, categories that differ between splits) raises under both.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from cvexp.data import CocoDetectionDataset, CocoSplit, DatasetError, UnreadableImage
from cvexp.data.shapes import ANNOTATION_FILE
from cvexp.errors import user_message
from cvexp.paths import CONFIG_DIR

CATEGORIES = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]


def image(image_id, **extra) -> dict:
    return {"id": image_id, "file_name": f"img{image_id}.png", "width": 64, "height": 48, **extra}


def box(annotation_id, image_id, bbox, category_id=1, **extra) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0, **extra}


def write_split(folder: Path, images: list, annotations: list, categories: list | None = None, raw: str | None = None) -> CocoSplit:
    """A split folder: a 64x48 PNG per image record that names one (``write: False`` in a record skips it), and the json."""
    folder.mkdir(parents=True, exist_ok=True)
    for record in images:
        if isinstance(record, dict) and record.pop("write", True) and isinstance(record.get("file_name"), str):
            target = (folder / record["file_name"]).resolve()
            if target.is_relative_to(folder.resolve()):
                Image.new("RGB", (64, 48), (120, 30, 200)).save(target)
    content = raw if raw is not None else json.dumps({"images": images, "annotations": annotations, "categories": categories or CATEGORIES})
    (folder / ANNOTATION_FILE).write_text(content)
    return CocoSplit(images_dir=str(folder))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels: what a decompression bomb looks like to a header check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@dataclass
class Case:
    """One damaged split: how to write it, what the error must say, and (when skippable) what is dropped."""

    build: Callable[[Path], CocoSplit]
    message: str  # a regular expression the DatasetError matches
    kind: str | None = None  # the dropped records' kind under skip; None: no skip can repair it
    dropped_images: int = 0
    dropped_annotations: int = 0
    options: dict = field(default_factory=dict)


def _good() -> tuple[list, list]:
    return [image(1)], [box(1, 1, [1, 1, 5, 5])]


def _with_image(extra: dict, annotations: list | None = None) -> Callable[[Path], CocoSplit]:
    images, good = _good()
    return lambda folder: write_split(folder, [*[dict(i) for i in images], {**image(2), **extra}], annotations if annotations is not None else good)


def _with_box(bad: dict) -> Callable[[Path], CocoSplit]:
    images, good = _good()
    return lambda folder: write_split(folder, [dict(i) for i in images], [*good, bad])


def _with_file(name: str, write: Callable[[Path], None]) -> Callable[[Path], CocoSplit]:
    def build(folder: Path) -> CocoSplit:
        split = write_split(folder, [image(1), {**image(2), "file_name": name, "write": False}], [box(1, 1, [1, 1, 5, 5]), box(2, 2, [1, 1, 5, 5])])
        write(folder / name)
        return split

    return build


def _escaping(folder: Path) -> CocoSplit:
    (folder.parent / "secret.png").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48)).save(folder.parent / "secret.png")  # it exists: only the name's confinement stops it
    return write_split(folder, [image(1), {**image(2), "file_name": "../secret.png"}], [box(1, 1, [1, 1, 5, 5])])


def _truncated(path: Path) -> None:
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:12])  # a header cut short


CASES: dict[str, Case] = {
    # The file itself: nothing to skip to.
    "malformed json": Case(lambda f: write_split(f, [], [], raw='{"images": [}'), r"malformed JSON at line 1, column 13"),
    "not a json object": Case(lambda f: write_split(f, [], [], raw="[1, 2]"), r"holds a JSON list, not an object"),
    "categories field missing": Case(lambda f: write_split(f, [], [], raw='{"images": [], "annotations": []}'), r"field 'categories' is missing"),
    "category without a name": Case(lambda f: write_split(f, *_good(), categories=[{"id": 1}]), r"categories\[0\] = \{'id': 1\} is not"),
    "duplicate category ids": Case(lambda f: write_split(f, *_good(), categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
                                   r"category id 1 appears twice"),  # fmt: skip
    "annotation file missing": Case(lambda f: (f.mkdir(parents=True), CocoSplit(str(f)))[1], r"annotation file not found"),
    "split without images": Case(lambda f: write_split(f, [], []), r"the train split has no images. Fix"),
    # Images.
    "duplicate image id": Case(lambda f: write_split(f, [image(1), image(2), {**image(2), "file_name": "other.png"}],
                                                     [box(1, 1, [1, 1, 5, 5]), box(2, 2, [1, 1, 5, 5])]),  # fmt: skip
                               r"image 2 \('img2.png'\): id: 2 images share the id 2", "duplicate image id", 2, 1),
    "image id not an integer": Case(_with_image({"id": "2"}), r"image '2' \('img2.png'\): id: '2' is not an integer", "image id not an integer", 1),
    "image file missing": Case(_with_image({"write": False}), r"image 2 \('img2.png'\): file_name: 'img2.png' is not in", "image file missing", 1),
    "file name outside the images folder": Case(_escaping, r"file_name: '\.\./secret.png' points outside the images folder",
                                                "image file outside the images folder", 1),  # fmt: skip
    "absolute file name": Case(_with_image({"file_name": "/etc/hostname", "write": False}), r"'/etc/hostname' points outside the images folder",
                               "image file outside the images folder", 1),  # fmt: skip
    "file name missing": Case(_with_image({"file_name": None}), r"image 2 \('None'\): file_name: None is not a file name", "image file_name missing", 1),
    "zero-byte image": Case(_with_file("empty.png", lambda p: p.write_bytes(b"")), r"empty.png: image 2 .*: file: the file is empty \(0 bytes\)",
                            "image file unreadable", 1, 1),  # fmt: skip
    "truncated image header": Case(_with_file("cut.png", _truncated), r"cut.png: image 2 .*not an image Pillow can read", "image file unreadable", 1, 1),
    "not an image": Case(_with_file("notes.png", lambda p: p.write_text("hello, not pixels")), r"notes.png: .*not an image Pillow can read",
                         "image file unreadable", 1, 1),  # fmt: skip
    "decompression bomb": Case(_with_file("bomb.png", lambda p: png_header_only(p, 20000, 20000)),
                               r"bomb.png: .*20000x20000 = 400,000,000 pixels is above data.max_image_pixels=89,478,485", "image above the pixel limit", 1, 1),  # fmt: skip
    "record size differs from the file": Case(_with_image({"width": 640, "height": 480}),
                                              r"width/height: the record says 640x480, the file is 64x48", "image size differs from the file", 1),  # fmt: skip
    "image record not an object": Case(lambda f: write_split(f, [image(1), "img2.png"], [box(1, 1, [1, 1, 5, 5])]),
                                       r"images\[1\]: images: 'img2.png' is not an object", "image record not an object", 1),  # fmt: skip
    # Annotations.
    "bbox not numeric": Case(_with_box(box(7, 1, ["10", 5, "a", 5])), r"annotation 7 \(image 1, 'img1.png'\): bbox: \['10', 5, 'a', 5\] holds values that are not numbers",
                             "bbox not numeric", 0, 1),  # fmt: skip
    "bbox NaN": Case(_with_box(box(7, 1, [float("nan"), 5, 5, 5])), r"annotation 7 .*bbox: \[nan, 5, 5, 5\] holds NaN", "bbox not finite", 0, 1),
    "bbox infinite": Case(_with_box(box(7, 1, [1, 1, float("inf"), 5])), r"annotation 7 .*holds NaN or infinity", "bbox not finite", 0, 1),
    "bbox with three values": Case(_with_box(box(7, 1, [1, 1, 5])), r"annotation 7 .*bbox: \[1, 1, 5\] is not \[x, y, width, height\]", "bbox malformed", 0, 1),
    "bbox negative size": Case(_with_box(box(7, 1, [10, 10, -3, 5])), r"annotation 7 .*negative width or height", "bbox negative size", 0, 1),
    "bbox without area": Case(_with_box(box(7, 1, [10, 10, 0, 5])), r"annotation 7 .*has no area", "bbox without area", 0, 1),
    "bbox entirely outside": Case(_with_box(box(7, 1, [70, 10, 5, 5])), r"annotation 7 .*lies entirely outside the 64x48 image", "bbox outside the image", 0, 1),
    "duplicate annotation id": Case(_with_box(box(1, 1, [2, 2, 5, 5])), r"annotation 1 .*another annotation has the id 1", "duplicate annotation id", 0, 1),
    "annotation of no image": Case(_with_box(box(7, 99, [1, 1, 5, 5])), r"annotation 7 \(image 99\): image_id: no image of the file has the id 99",
                                   "annotation of no image", 0, 1),  # fmt: skip
    "unknown category": Case(_with_box(box(7, 1, [1, 1, 5, 5], category_id=5)), r"category_id: 5 is not among the file's categories \[1, 2\]",
                             "unknown category", 0, 1),  # fmt: skip
    "iscrowd not 0 or 1": Case(_with_box(box(7, 1, [1, 1, 5, 5], iscrowd=2)), r"iscrowd: 2 is not 0 or 1", "iscrowd not 0 or 1", 0, 1),
    "negative area": Case(_with_box(box(7, 1, [1, 1, 5, 5], area=-4)), r"area: -4 is not a non-negative number", "area not a number", 0, 1),
    "annotation record not an object": Case(_with_box(["not", "an", "object"]), r"annotations\[1\]: annotations: \['not', 'an', 'object'\]",
                                            "annotation record not an object", 0, 1),  # fmt: skip
}


def _build(case: str, tmp_path: Path) -> CocoSplit:
    return CASES[case].build(tmp_path / "train")


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_raise_names_the_file_the_record_and_the_field(case: str, tmp_path: Path) -> None:
    split = _build(case, tmp_path)
    with pytest.raises(DatasetError, match=CASES[case].message) as error:
        CocoDetectionDataset(**vars(split), name="train", **CASES[case].options)
    text = str(error.value)
    assert str(tmp_path / "train") in text  # the file (the json, or the image file)
    if CASES[case].kind:
        assert "data.on_invalid=skip" in text  # and what to do about it


@pytest.mark.parametrize("case", list(CASES))
def test_skip_drops_exactly_the_damaged_records_and_counts_them(case: str, tmp_path: Path) -> None:
    expected = CASES[case]
    split = _build(case, tmp_path)
    if expected.kind is None:  # nothing to skip to: the same named error
        with pytest.raises(DatasetError, match=expected.message):
            CocoDetectionDataset(**vars(split), on_invalid="skip", name="train", **expected.options)
        return
    with pytest.warns(UserWarning, match=r"data.on_invalid=skip dropped \d+ records"):
        dataset = CocoDetectionDataset(**vars(split), on_invalid="skip", name="train", **expected.options)
    report = dataset.report
    assert report.counts.get(expected.kind, 0) >= 1, report.counts
    # Nothing lost silently: every record of the file is kept or listed.
    dropped_images = sum(1 for p in report.dropped if p.record.startswith(("image ", "images[")))
    dropped_annotations = sum(1 for p in report.dropped if p.record.startswith(("annotation ", "annotations[")))
    assert (report.images - report.images_kept, report.annotations - report.annotations_kept) == (expected.dropped_images, expected.dropped_annotations)
    assert (dropped_images, dropped_annotations) == (expected.dropped_images, expected.dropped_annotations)
    assert all(p.file and p.record and p.field and p.message for p in report.dropped)
    # What is kept loads.
    assert len(dataset) == report.images_kept and all(dataset[i].target.boxes.shape[1] == 4 for i in range(len(dataset)))


def test_a_box_overhanging_the_image_is_clipped_and_counted(tmp_path: Path) -> None:
    split = write_split(tmp_path, [image(1)], [box(1, 1, [-4, 40, 20, 20]), box(2, 1, [1, 1, 5, 5])])
    dataset = CocoDetectionDataset(**vars(split))
    assert dataset.report.boxes_clipped == 1 and not dataset.report.dropped
    assert dataset[0].target.boxes.tolist()[0] == [0.0, 40.0, 16.0, 8.0]


def test_train_and_val_with_different_categories_are_refused_before_training(tmp_path: Path) -> None:
    from cvexp.data import VisionDataModule

    write_split(tmp_path / "train", *_good())
    write_split(tmp_path / "val", *_good(), categories=[{"id": 1, "name": "thing"}, {"id": 2, "name": "another"}])
    datamodule = VisionDataModule(CocoDetectionDataset, root=str(tmp_path), train={"images_dir": "train"}, val={"images_dir": "val"}, on_invalid="skip")
    with pytest.raises(DatasetError, match=r"the val split's categories differ from the train split's .* only in val: \[\(2, 'another'\)\]"):
        datamodule.setup()


def test_header_checks_are_cached_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvexp.data import validation

    split = write_split(tmp_path / "train", [image(1), image(2)], [box(1, 1, [1, 1, 5, 5])])
    cache_file = tmp_path / "headers.json"
    reads: list[Path] = []
    original = validation.read_image_header
    monkeypatch.setattr(validation, "read_image_header", lambda path: reads.append(path) or original(path))
    CocoDetectionDataset(**vars(split), header_cache=validation.ImageHeaderCache(cache_file))
    assert len(reads) == 2 and cache_file.is_file()
    CocoDetectionDataset(**vars(split), header_cache=validation.ImageHeaderCache(cache_file))
    assert len(reads) == 2  # a second run opens no file
    Image.new("RGB", (64, 48), (0, 0, 0)).save(tmp_path / "train" / "img2.png", compress_level=0)  # changed: read again
    CocoDetectionDataset(**vars(split), header_cache=validation.ImageHeaderCache(cache_file))
    assert [p.name for p in reads[2:]] == ["img2.png"]


# --- Images that break at read time, after validation passed ---


def _broken_after_validation(tmp_path: Path, on_invalid: str) -> CocoDetectionDataset:
    split = write_split(tmp_path / "train", [image(1), image(2)], [box(1, 1, [1, 1, 5, 5]), box(2, 2, [1, 1, 5, 5])])
    dataset = CocoDetectionDataset(**vars(split), on_invalid=on_invalid)
    path = tmp_path / "train" / "img2.png"
    path.write_bytes(path.read_bytes()[:60])  # the disk changed under the run: the header is intact, the pixels are not
    return dataset


def test_an_image_broken_after_validation_fails_naming_the_file(tmp_path: Path) -> None:
    dataset = _broken_after_validation(tmp_path, "raise")
    assert dataset[0].image.shape == (48, 64, 3)
    with pytest.raises(DatasetError, match=r"img2.png: image 2 cannot be read .* it passed validation before training"):
        dataset[1]


def test_an_image_broken_after_validation_fails_from_a_worker_with_the_same_message(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    dataset = _broken_after_validation(tmp_path, "raise")
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=lambda samples: samples)
    with pytest.raises(DatasetError) as error:
        list(loader)
    assert "Traceback" in str(error.value)  # PyTorch puts the worker's traceback into the message ...
    assert user_message(error.value).startswith(f"{tmp_path / 'train' / 'img2.png'}: image 2 cannot be read")  # ... cvexp prints the message


def test_under_skip_an_image_broken_after_validation_is_left_out_and_counted(tmp_path: Path) -> None:
    from transformers import DetrImageProcessorPil

    from cvexp.adapters import DetrAdapter
    from cvexp.data import BatchCollator
    from cvexp.data.pixels import TorchPixels

    dataset = _broken_after_validation(tmp_path, "skip")
    skipped = dataset[1]
    assert isinstance(skipped, UnreadableImage) and skipped.path.endswith("img2.png") and skipped.reason
    batch = BatchCollator(TorchPixels(DetrImageProcessorPil(), 32), DetrAdapter(dataset.label_map))([dataset[0], skipped])
    assert len(batch["targets"]) == 1 and batch["pixel_values"].shape[0] == 1 and batch["unreadable"] == [skipped]
    empty = BatchCollator(TorchPixels(DetrImageProcessorPil(), 32), DetrAdapter(dataset.label_map))([skipped])
    assert empty["targets"] == [] and "pixel_values" not in empty


# --- What the user sees: python -m cvexp.train on damaged data ---


def _train(tmp_path: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVEXP_ROOT": str(tmp_path / "root"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cvexp.train", "debug=smoke", "trainer.max_epochs=1", "test_after_fit=false", "report=none", "logger=none",
               "data=coco", f"data.root={data_root}", "data.train.images_dir=train", "data.val.images_dir=val", "data.image_size=64",
               "data.num_workers=0", *overrides]  # fmt: skip
    return subprocess.run(command, cwd=CONFIG_DIR.parent, env=env, capture_output=True, text=True, timeout=300)


def _two_splits(root: Path, bad: dict) -> Path:
    images = [image(i) for i in range(1, 5)]
    write_split(root / "train", [dict(i) for i in images], [box(i, i, [1, 1, 20, 20]) for i in range(1, 5)] + [bad])
    write_split(root / "val", [dict(i) for i in images], [box(i, i, [1, 1, 20, 20]) for i in range(1, 5)])
    return root


def test_the_command_line_stops_with_one_clear_message_and_no_traceback(tmp_path: Path) -> None:
    data = _two_splits(tmp_path / "data", box(9, 2, [1, "x", 5, 5]))
    result = _train(tmp_path, data)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    last = result.stdout.strip().splitlines()[-1]
    assert f"{data / 'train' / ANNOTATION_FILE}: annotation 9 (image 2, 'img2.png'): bbox: [1, 'x', 5, 5] holds values that are not numbers" in last


def test_the_command_line_under_skip_trains_and_prints_what_it_dropped(tmp_path: Path) -> None:
    data = _two_splits(tmp_path / "data", box(9, 2, [1, "x", 5, 5]))
    result = _train(tmp_path, data, "data.on_invalid=skip")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "data: what validation kept" in result.stdout and "1 bbox not numeric" in result.stdout  # the printed table
    (run_dir,) = (tmp_path / "root" / "outputs" / "runs" / "train").iterdir()
    train = json.loads((run_dir / "data_validation.json").read_text())["splits"]["train"]
    assert (train["images"], train["images_kept"], train["annotations"], train["annotations_kept"]) == (4, 4, 5, 4)
    assert train["dropped_by_kind"] == {"bbox not numeric": 1}
    assert train["dropped"][0]["record"] == "annotation 9 (image 2, 'img2.png')"


def test_the_command_line_fails_naming_an_image_that_breaks_in_a_worker(tmp_path: Path) -> None:
    data = _two_splits(tmp_path / "data", box(9, 2, [2, 2, 5, 5]))
    # Readable headers, broken pixels: validation passes, the DataLoader worker fails mid-epoch.
    for name in ("img3.png",):
        path = data / "train" / name
        path.write_bytes(path.read_bytes()[:60])
    result = _train(tmp_path, data, "data.num_workers=1", "data.batch_size=4")
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    last = result.stdout.strip().splitlines()[-1]  # the log's last line (warnings of libraries go to stderr)
    assert last.endswith("(counted in the run's summary).") and "img3.png: image 3 cannot be read" in last
