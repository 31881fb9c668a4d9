"""Classification readers (ImageFolder layout, Roboflow's one-hot CSV): every damaged record under both policies, and the real egg-candling data.

Each damage case is a real split on disk (small PNGs, a CSV) with one kind of damage beside a good
record. With ``on_invalid=raise`` it stops with a :class:`DatasetError` naming the file, the record
and the field; with ``on_invalid=skip`` it drops exactly the damaged records, counts them by kind and
accounts for every record (kept + dropped = all). Damage no skipping repairs raises under both.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from cvexp.data import validation
from cvexp.data.classification import ClassificationCsvDataset, ImageFolderDataset
from cvexp.data.targets import ClassificationTarget
from cvexp.errors import DatasetError
from cvexp.paths import CONFIG_DIR

EGG_CANDLING = Path(os.environ.get("CVEXP_EGG_CANDLING", CONFIG_DIR.parent.parent / "shared" / "datasets" / "egg-candling"))
needs_egg_candling = pytest.mark.skipif(
    not (EGG_CANDLING / "train" / "_classes.csv").is_file(),
    reason=f"the egg-candling dataset is not at {EGG_CANDLING} (set CVEXP_EGG_CANDLING to its folder)",
)


# --- Writing small splits ---


def png(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (120, 30, 200)) -> Path:
    """A real ``size`` (width, height) RGB image at ``path`` (the format from its extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def two_halves(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """An image red on its left half and blue on its right half (to see a flip)."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels: what a decompression bomb looks like to a header check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def truncated(path: Path) -> None:
    """An image whose header is cut short."""
    png(path)
    path.write_bytes(path.read_bytes()[:12])


def not_an_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hello, not pixels")


def empty_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write_csv(folder: Path, lines: list[str], name: str = "_classes.csv") -> Path:
    """A CSV as Roboflow writes it: the lines joined by newlines, no newline after the last."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines))
    return folder / name


@dataclass
class Case:
    """One damaged split: how to write it (returns the dataset's keyword arguments), what the error says, what skip drops."""

    build: Callable[[Path], dict[str, Any]]
    message: str  # a regular expression the DatasetError matches
    kind: str | None = None  # the dropped records' kind under skip; None: no skip can repair it
    dropped: int = 1
    skip_message: str | None = None  # what skip says instead, where it differs (every record dropped)


# --- ImageFolder layout ---


def image_folder(root: Path, damage: Callable[[Path], None] | None = None, damaged_name: str = "cat/z_bad.png") -> dict[str, Any]:
    """``root/cat/a.png`` (id 0), ``root/dog/c.png`` (id 2 when damaged, else 1), and the damaged file when given."""
    png(root / "cat" / "a.png")
    png(root / "dog" / "c.png")
    if damage:
        damage(root / damaged_name)
    return {"images_dir": root}


FOLDER_CASES: dict[str, Case] = {
    "not an image": Case(lambda r: image_folder(r, not_an_image), r"cat/z_bad.png: image 1 \('cat/z_bad.png'\): file: not an image Pillow can read",
                         "image file unreadable"),  # fmt: skip
    "zero-byte image": Case(lambda r: image_folder(r, empty_file), r"cat/z_bad.png: image 1 \('cat/z_bad.png'\): file: the file is empty \(0 bytes\)",
                            "image file unreadable"),  # fmt: skip
    "truncated header": Case(lambda r: image_folder(r, truncated), r"z_bad.png: image 1 .*: file: not an image Pillow can read", "image file unreadable"),
    "decompression bomb": Case(lambda r: image_folder(r, lambda p: png_header_only(p, 20000, 20000)),
                               r"z_bad.png: image 1 .*: file: 20000x20000 = 400,000,000 pixels is above data.max_image_pixels=89,478,485",
                               "image above the pixel limit"),  # fmt: skip
    "images folder missing": Case(lambda r: {"images_dir": r / "nowhere"}, r"nowhere: images folder not found"),
    "no class folders": Case(lambda r: (png(r / "a.png"), {"images_dir": r})[1], r"no class folders: the ImageFolder layout is images_dir/<class name>/<image>"),
    "class folders without images": Case(lambda r: ((r / "cat").mkdir(parents=True), {"images_dir": r})[1], r"the train split has no images\. Fix"),
    "every image damaged": Case(lambda r: (not_an_image(r / "cat" / "a.png"), {"images_dir": r})[1], r"cat/a.png: image 0 .*not an image Pillow can read",
                                skip_message=r"the train split has no images \(all 1 dropped: \{'image file unreadable': 1\}\)"),  # fmt: skip
}


# --- Roboflow's one-hot CSV ---

HEADER = "filename, cat, dog"


def csv_split(root: Path, rows: list[str], header: str | None = HEADER, files: dict[str, Callable[[Path], Any]] | None = None) -> dict[str, Any]:
    """A split folder: ``a.png`` (row 2, a cat) then ``rows``; every ``*.png`` a row names is written as a real image unless ``files`` says how."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header is not None else []) + ["a.png, 1, 0", *rows]
    for line in lines[1 if header is not None else 0 :]:
        name = line.split(",")[0].strip()
        if name and "/" not in name and name not in (files or {}):
            png(root / name)
    for name, write in (files or {}).items():
        write(root / name)
    write_csv(root, lines)
    return {"images_dir": root}


CSV_CASES: dict[str, Case] = {
    "row without a label": Case(lambda r: csv_split(r, ["b.png, 0, 0"]), r"_classes.csv: row 3 \('b.png'\): labels: every class column \(cat, dog\) is 0",
                                "row without a label"),  # fmt: skip
    "row with two labels": Case(lambda r: csv_split(r, ["b.png, 1, 1"]), r"_classes.csv: row 3 \('b.png'\): cat/dog: 2 classes are 1; this reader is single-label",
                                "row with several labels"),  # fmt: skip
    "label not 0 or 1": Case(lambda r: csv_split(r, ["b.png, 2, 0"]), r"_classes.csv: row 3 \('b.png'\): cat: '2' is not 0 or 1", "label not 0 or 1"),
    "label not a number": Case(lambda r: csv_split(r, ["b.png, 0, yes"]), r"row 3 \('b.png'\): dog: 'yes' is not 0 or 1", "label not 0 or 1"),
    "image file missing": Case(lambda r: csv_split(r, ["gone.png, 0, 1"], files={"gone.png": lambda p: None}),
                               r"_classes.csv: row 3 \('gone.png'\): filename: 'gone.png' is not in", "image file missing"),  # fmt: skip
    "duplicate filename": Case(lambda r: csv_split(r, ["b.png, 0, 1", "b.png, 1, 0"]),
                               r"_classes.csv: row 3 \('b.png'\): filename: 2 rows name 'b.png' \(rows 3, 4\)", "duplicate filename", 2),  # fmt: skip
    "path with ../": Case(lambda r: (png(r.parent / "secret.png"), csv_split(r, ["../secret.png, 0, 1"]))[1],
                          r"row 3 \('\.\./secret.png'\): filename: '\.\./secret.png' points outside the images folder",
                          "image file outside the images folder"),  # fmt: skip
    "absolute path": Case(lambda r: csv_split(r, ["/etc/hostname, 0, 1"]), r"row 3 \('/etc/hostname'\): filename: '/etc/hostname' points outside",
                          "image file outside the images folder"),  # fmt: skip
    "empty filename": Case(lambda r: csv_split(r, [", 0, 1"]), r"row 3 \(''\): filename: the filename cell is empty", "image file_name missing"),
    "row shorter than the header": Case(lambda r: csv_split(r, ["b.png, 0"]), r"row 3 \('b.png'\): row: 2 cells, the header has 3",
                                        "row length differs from the header"),  # fmt: skip
    "unreadable image": Case(lambda r: csv_split(r, ["notes.png, 0, 1"], files={"notes.png": not_an_image}),
                             r"notes.png: row 3 \('notes.png'\): file: not an image Pillow can read", "image file unreadable"),  # fmt: skip
    "truncated image": Case(lambda r: csv_split(r, ["cut.png, 0, 1"], files={"cut.png": truncated}),
                            r"cut.png: row 3 \('cut.png'\): file: not an image Pillow can read", "image file unreadable"),  # fmt: skip
    "decompression bomb": Case(lambda r: csv_split(r, ["bomb.png, 0, 1"], files={"bomb.png": lambda p: png_header_only(p, 20000, 20000)}),
                               r"bomb.png: row 3 \('bomb.png'\): file: .* is above data.max_image_pixels", "image above the pixel limit"),  # fmt: skip
    # The file itself: nothing to skip to.
    "no header": Case(lambda r: csv_split(r, ["b.png, 0, 1"], header=None), r"_classes.csv: row 1 is 'a.png, 1, 0', not a header starting with 'filename'"),
    "no class columns": Case(lambda r: (png(r / "a.png"), write_csv(r, ["filename", "a.png"]), {"images_dir": r})[2],
                             r"_classes.csv: the header has no class columns, only 'filename'"),  # fmt: skip
    "no rows": Case(lambda r: (write_csv(r, [HEADER]), {"images_dir": r})[1], r"_classes.csv: the CSV lists no images \(only its header\)"),
    "empty file": Case(lambda r: (write_csv(r, []), {"images_dir": r})[1], r"_classes.csv: the file is empty: no header, no rows"),
    "a class named twice": Case(lambda r: csv_split(r, [], header="filename, cat, cat"), r"the header names the classes \['cat'\] more than once"),
    "csv missing": Case(lambda r: (r.mkdir(parents=True), {"images_dir": r})[1], r"_classes.csv: classification CSV not found"),
    "not a text file": Case(lambda r: (r.mkdir(parents=True), (r / "_classes.csv").write_bytes(b"\xff\xfe\x00bad"), {"images_dir": r})[2],
                            r"_classes.csv: classification CSV is not UTF-8 text"),  # fmt: skip
    "every row damaged": Case(lambda r: (png(r / "a.png"), write_csv(r, [HEADER, "a.png, 0, 0"]), {"images_dir": r})[2], r"row 2 \('a.png'\): labels:",
                              skip_message=r"the train split has no images \(all 1 dropped: \{'row without a label': 1\}\)"),  # fmt: skip
}

CASES = {**{f"folder: {k}": (ImageFolderDataset, c) for k, c in FOLDER_CASES.items()},
         **{f"csv: {k}": (ClassificationCsvDataset, c) for k, c in CSV_CASES.items()}}  # fmt: skip


def test_every_named_problem_has_a_case() -> None:
    kinds = {case.kind for _, case in CASES.values() if case.kind}
    assert kinds >= {"image file unreadable", "image above the pixel limit", "row without a label", "row with several labels", "label not 0 or 1",
                     "image file missing", "duplicate filename", "image file outside the images folder"}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_raise_names_the_file_the_record_and_the_field(case: str, tmp_path: Path) -> None:
    dataset_class, expected = CASES[case]
    kwargs = expected.build(tmp_path / "train")
    with pytest.raises(DatasetError, match=expected.message) as error:
        dataset_class(**kwargs, name="train")
    assert str(tmp_path) in str(error.value)  # the file (the CSV, the image, the folder)
    if expected.kind:
        assert "data.on_invalid=skip" in str(error.value)  # and what to do about it


@pytest.mark.parametrize("case", list(CASES))
def test_skip_drops_exactly_the_damaged_records_and_counts_them(case: str, tmp_path: Path) -> None:
    dataset_class, expected = CASES[case]
    kwargs = expected.build(tmp_path / "train")
    if expected.kind is None:  # nothing to skip to: a named error under skip too
        with pytest.raises(DatasetError, match=expected.skip_message or expected.message):
            dataset_class(**kwargs, on_invalid="skip", name="train")
        return
    with pytest.warns(UserWarning, match=r"data.on_invalid=skip dropped \d+ records"):
        dataset = dataset_class(**kwargs, on_invalid="skip", name="train")
    report = dataset.report
    assert report.counts == {expected.kind: expected.dropped}
    assert report.images - report.images_kept == expected.dropped == len(report.dropped)  # nothing lost silently
    assert all(p.file and p.record and p.field and p.message for p in report.dropped)
    # What is kept loads.
    assert len(dataset) == report.images_kept >= 1
    assert all(isinstance(dataset[i].target, ClassificationTarget) for i in range(len(dataset)))


def test_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data.on_invalid is 'drop'; use 'raise' or 'skip'"):
        ImageFolderDataset(**image_folder(tmp_path), on_invalid="drop")  # type: ignore[arg-type]


# --- What a good split gives ---


def test_image_folder_classes_ids_and_samples(tmp_path: Path) -> None:
    for name in ("dog/d2.png", "dog/d1.png", "cat/c1.png", "cat/nested/c2.png"):
        png(tmp_path / name)
    (tmp_path / "bird").mkdir()  # no images: still a class
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    png(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"3 files ignored .*'\.ipynb_checkpoints/x.png', 'dog/notes.txt', 'top.png'"):
        png(tmp_path / "top.png")  # outside any class folder
        dataset = ImageFolderDataset(tmp_path, name="train")
    assert [(c.id, c.name) for c in dataset.label_map.categories] == [(0, "bird"), (1, "cat"), (2, "dog")]
    assert dataset.categories == [{"id": 0, "name": "bird"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert {i: (r["file_name"], r["category_id"]) for i, r in dataset.images.items()} == {
        0: ("cat/c1.png", 1), 1: ("cat/nested/c2.png", 1), 2: ("dog/d1.png", 2), 3: ("dog/d2.png", 2)}  # fmt: skip
    assert (dataset.report.images, dataset.report.images_kept, dataset.report.dropped) == (4, 4, [])
    sample = dataset[2]
    assert sample.image.shape == (48, 64, 3) and sample.image.dtype == np.uint8
    assert sample.target == ClassificationTarget(image_id=2, category_id=2, size=(48, 64), file_name="dog/d1.png")


def test_csv_classes_follow_the_columns_and_ids_the_rows(tmp_path: Path) -> None:
    for name in ("b.png", "a, b.png", "c.png"):
        png(tmp_path / name)
    png(tmp_path / "extra.png")  # not in the CSV: not read, and said so
    write_csv(tmp_path, ["filename, zebra, ant", "c.png, 0, 1", '"a, b.png", 1, 0', "b.png, 0, 1", ""])  # a quoted name, a trailing blank line
    with pytest.warns(UserWarning, match=r"1 files ignored \(images that _classes.csv does not list, so without a label\): 'extra.png'"):
        dataset = ClassificationCsvDataset(tmp_path)
    assert [(c.id, c.name) for c in dataset.label_map.categories] == [(0, "zebra"), (1, "ant")]  # column order, not sorted
    assert {i: (r["file_name"], r["category_id"]) for i, r in dataset.images.items()} == {0: ("c.png", 1), 1: ("a, b.png", 0), 2: ("b.png", 1)}
    assert dataset[1].target == ClassificationTarget(image_id=1, category_id=0, size=(48, 64), file_name="a, b.png")
    assert dataset.report.annotation_file == str(tmp_path / "_classes.csv")


def test_csv_file_elsewhere_and_plain_commas(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png")
    csv_file = write_csv(tmp_path / "labels", ["filename,cat,dog", "a.png,0,1"], name="train.csv")
    dataset = ClassificationCsvDataset(tmp_path / "images", csv_file=csv_file)
    assert dataset.images[0]["category_id"] == 1 and dataset.report.annotation_file == str(csv_file)


def test_the_transform_changes_the_image_and_the_size_follows(tmp_path: Path) -> None:
    two_halves(tmp_path / "cat" / "a.png")
    flipped = ImageFolderDataset(tmp_path, transform=A.Compose([A.HorizontalFlip(p=1)]))[0]
    assert tuple(flipped.image[0, 0]) == (0, 0, 255) and tuple(flipped.image[0, -1]) == (255, 0, 0)
    resized = ImageFolderDataset(tmp_path, transform=A.Compose([A.Resize(20, 30)]))[0]
    assert resized.image.shape == (20, 30, 3) and resized.target.size == (20, 30)


def test_header_checks_are_cached_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_split(tmp_path, ["b.png, 0, 1"])
    cache_file = tmp_path / "headers.json"
    reads: list[Path] = []
    original = validation.read_image_header
    monkeypatch.setattr(validation, "read_image_header", lambda path: reads.append(path) or original(path))
    ClassificationCsvDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert len(reads) == 2 and cache_file.is_file()
    ClassificationCsvDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert len(reads) == 2  # a second run opens no image
    png(tmp_path / "b.png", size=(10, 10))
    ClassificationCsvDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert [p.name for p in reads[2:]] == ["b.png"]


def test_splits_with_different_classes_are_refused(tmp_path: Path) -> None:
    train = ImageFolderDataset(**image_folder(tmp_path / "train"), name="train")
    png(tmp_path / "val" / "cat" / "a.png")
    png(tmp_path / "val" / "fox" / "a.png")
    val = ImageFolderDataset(tmp_path / "val", name="val")
    with pytest.raises(DatasetError, match=r"the val split's categories differ from the train split's .* only in val: \[\(1, 'fox'\)\]"):
        validation.check_same_categories({"train": train, "val": val})


# --- The real data ---

# Images per class and split, from the dataset's README.
EGG_CANDLING_COUNTS = {
    "train": {"Pertengahan": 120, "Tahap Akhir": 140, "Tahap Awal": 131, "Telur Mati": 38},
    "valid": {"Pertengahan": 53, "Tahap Akhir": 45, "Tahap Awal": 56, "Telur Mati": 11},
    "test": {"Pertengahan": 21, "Tahap Akhir": 23, "Tahap Awal": 18, "Telur Mati": 6},
}


@needs_egg_candling
def test_the_egg_candling_splits_read_whole() -> None:
    started = time.perf_counter()
    datasets = {split: ClassificationCsvDataset(EGG_CANDLING / split, name=split) for split in EGG_CANDLING_COUNTS}
    seconds = time.perf_counter() - started
    for split, dataset in datasets.items():
        names = [c.name for c in dataset.label_map.categories]
        assert names == ["Pertengahan", "Tahap Akhir", "Tahap Awal", "Telur Mati"]
        counts = Counter(names[record["category_id"]] for record in dataset.images.values())
        assert counts == EGG_CANDLING_COUNTS[split], split
        assert (dataset.report.images, dataset.report.dropped) == (sum(counts.values()), [])
    assert [len(d) for d in datasets.values()] == [429, 165, 68]
    validation.check_same_categories({"train": datasets["train"], "valid": datasets["valid"], "test": datasets["test"]})
    sample = datasets["test"][0]
    assert sample.image.shape == (416, 416, 3) and sample.target.size == (416, 416)
    assert seconds < 20, f"validating 662 image headers took {seconds:.1f} s"
