"""Semantic-segmentation readers (Roboflow's png-mask-semantic export, images/ + masks/ folders): every damaged pair under both policies, masks moved with their images, and the real indoor-seg data.

Each damage case is a real split on disk (small JPEG/PNG images, class-index PNG masks, a
``_classes.csv``) with one kind of damage beside a good pair. With ``on_invalid=raise`` it stops with
a :class:`DatasetError` naming the file, the record and the field; with ``on_invalid=skip`` it drops
exactly the damaged images, counts them by kind and accounts for every image. Damage no skipping
repairs (the class list, a split left without images) raises under both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from cvexp.data import semantic_segmentation, validation
from cvexp.data.images import UnreadableImage
from cvexp.data.semantic_segmentation import MaskFolderDataset, RoboflowMaskDataset
from cvexp.data.targets import IGNORE_INDEX, SegmentationTarget
from cvexp.errors import ConfigError, DatasetError
from cvexp.paths import CONFIG_DIR
from tests.test_classification_data import Case, not_an_image, png, png_header_only, truncated, two_halves, write_csv

INDOOR_SEG = Path(os.environ.get("CVEXP_INDOOR_SEG", CONFIG_DIR.parent.parent / "shared" / "datasets" / "indoor-seg"))
needs_indoor_seg = pytest.mark.skipif(
    not (INDOOR_SEG / "train" / "_classes.csv").is_file(),
    reason=f"the indoor-seg dataset is not at {INDOOR_SEG} (set CVEXP_INDOOR_SEG to its folder)",
)

SIZE = (32, 24)  # width, height
CLASSES = ["Pixel Value, Class", "0, background", "2, road", "1, wall"]  # not in pixel-value order: read sorted


def halves_mask(size: tuple[int, int] = SIZE) -> np.ndarray:
    """Class 1 on the left half, 2 on the right, an unlabelled (255) top row."""
    width, height = size
    mask = np.full((height, width), 2, np.uint8)
    mask[:, : width // 2] = 1
    mask[0] = IGNORE_INDEX
    return mask


def save_mask(path: Path, mask: np.ndarray | None = None, mode: str = "L") -> Path:
    """A class-index PNG: mode ``L``, or ``P`` with a palette whose colours are not the indices."""
    mask = halves_mask() if mask is None else mask
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("P", (mask.shape[1], mask.shape[0]))
        image.putdata(mask.ravel().tolist())
        image.putpalette([value for index in range(256) for value in ((index * 37) % 256, 200, 10)])
    else:
        image = Image.fromarray(mask)
    image.save(path)
    return path


def roboflow_split(root: Path, names: tuple[str, ...] = ("a.jpg",), classes: list[str] | None = None) -> dict[str, Any]:
    """``NAME.jpg`` + ``NAME_mask.png`` per name (halves), and ``_classes.csv``."""
    for name in names:
        two_halves(root / name, SIZE)
        save_mask(root / (Path(name).stem + "_mask.png"))
    write_csv(root, CLASSES if classes is None else classes)
    return {"images_dir": root}


def damaged_pair(damage: Callable[[Path, Path], Any]) -> Callable[[Path], dict[str, Any]]:
    """A good pair ``a`` and ``b.jpg`` whose image or mask ``damage(image, mask)`` changes."""

    def build(root: Path) -> dict[str, Any]:
        kwargs = roboflow_split(root, ("a.jpg", "b.jpg"))
        damage(root / "b.jpg", root / "b_mask.png")
        return kwargs

    return build


def folder_pair(damage: Callable[[Path, Path], Any]) -> Callable[[Path], dict[str, Any]]:
    """The same in the images/ + masks/ layout, the classes given as a list."""

    def build(root: Path) -> dict[str, Any]:
        for name in ("a", "b"):
            two_halves(root / "images" / f"{name}.jpg", SIZE)
            save_mask(root / "masks" / f"{name}.png")
        damage(root / "images" / "b.jpg", root / "masks" / "b.png")
        return {"images_dir": root / "images", "masks_dir": root / "masks", "classes": ["background", "wall", "road"]}

    return build


def exif_rotated_jpeg(path: Path, stored: tuple[int, int] = (40, 30)) -> None:
    """A JPEG stored ``stored`` (width, height) with EXIF orientation 6: shown (and trained on) turned by 90 degrees."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", stored, (10, 120, 30)).save(path, exif=exif.tobytes())


def _set(mask: Path, value: int) -> None:
    pixels = halves_mask()
    pixels[5, 5] = value
    save_mask(mask, pixels)


CASES: dict[str, Case] = {
    "mask missing": Case(damaged_pair(lambda image, mask: mask.unlink()),
                         r"b_mask.png: image 1 \('b.jpg'\): mask: the image's mask 'b_mask.png' is not in", "mask file missing"),  # fmt: skip
    "mask missing (folder layout)": Case(folder_pair(lambda image, mask: mask.unlink()),
                                         r"masks/b.png: image 1 \('b.jpg'\): mask: the image's mask 'b.png' is not in", "mask file missing"),  # fmt: skip
    "mask not an image": Case(damaged_pair(lambda image, mask: not_an_image(mask)),
                              r"b_mask.png: image 1 \('b.jpg'\): mask: not an image Pillow can read", "mask file unreadable"),  # fmt: skip
    "mask header cut": Case(damaged_pair(lambda image, mask: truncated(mask)), r"b_mask.png: image 1 .*: mask: not an image Pillow can read",
                            "mask file unreadable"),  # fmt: skip
    "mask pixels cut": Case(damaged_pair(lambda image, mask: mask.write_bytes(mask.read_bytes()[:60])),
                            r"b_mask.png: image 1 .*: mask: its pixels do not decode", "mask file unreadable"),  # fmt: skip
    "RGB mask": Case(damaged_pair(lambda image, mask: png(mask, SIZE)),
                     r"b_mask.png: image 1 \('b.jpg'\): mask: its mode is RGB, not L or P; convert it to a class-index PNG", "mask not 8-bit single-channel"),  # fmt: skip
    "16-bit mask": Case(damaged_pair(lambda image, mask: Image.new("I;16", SIZE).save(mask)), r"b_mask.png: .*: mask: its mode is I;16, not L or P",
                        "mask not 8-bit single-channel"),  # fmt: skip
    "RGB mask (folder layout)": Case(folder_pair(lambda image, mask: png(mask, SIZE)), r"masks/b.png: image 1 .*convert it to a class-index PNG",
                                     "mask not 8-bit single-channel"),  # fmt: skip
    "mask of another size": Case(damaged_pair(lambda image, mask: save_mask(mask, halves_mask((16, 24)))),
                                 r"b_mask.png: image 1 \('b.jpg'\): mask: the mask is 16x24, the image 32x24 \(both upright", "mask size differs from the image"),  # fmt: skip
    "mask drawn ignoring the EXIF orientation": Case(damaged_pair(lambda image, mask: (exif_rotated_jpeg(image), save_mask(mask, halves_mask((40, 30))))),
                                                     r"b_mask.png: .*: mask: the mask is 40x30, the image 30x40 .*drawn ignoring the image's EXIF orientation",
                                                     "mask size differs from the image"),  # fmt: skip
    "unknown class value": Case(damaged_pair(lambda image, mask: _set(mask, 7)),
                                r"b_mask.png: image 1 \('b.jpg'\): mask: pixel values \[7\] are neither class ids \(\[0, 1, 2\]\) nor 255", "mask value unknown"),  # fmt: skip
    "unknown class value (folder layout)": Case(folder_pair(lambda image, mask: _set(mask, 3)), r"masks/b.png: .*pixel values \[3\] are neither class ids",
                                                "mask value unknown"),  # fmt: skip
    "mask above the pixel limit": Case(damaged_pair(lambda image, mask: png_header_only(mask, 20000, 20000)),
                                       r"b_mask.png: image 1 .*: mask: 20000x20000 = 400,000,000 pixels is above data.max_image_pixels",
                                       "mask above the pixel limit"),  # fmt: skip
    "image unreadable": Case(damaged_pair(lambda image, mask: not_an_image(image)), r"b.jpg: image 1 \('b.jpg'\): file: not an image Pillow can read",
                             "image file unreadable"),  # fmt: skip
    "image above the pixel limit": Case(damaged_pair(lambda image, mask: (image.unlink(), png_header_only(image.with_suffix(".png"), 20000, 20000))),
                                        r"b.png: image 1 \('b.png'\): file: .* is above data.max_image_pixels", "image above the pixel limit"),  # fmt: skip
    "two images, one mask name": Case(damaged_pair(lambda image, mask: png(image.with_suffix(".png"), SIZE)),
                                      r"b_mask.png: image 1 \('b.jpg'\): mask: 'b.png' also maps to the mask 'b_mask.png'", "images share a mask name", 2),  # fmt: skip
    # The class list and the split: nothing to skip to.
    "classes file missing": Case(lambda r: (roboflow_split(r), (r / "_classes.csv").unlink(), {"images_dir": r})[2], r"_classes.csv: classes file not found"),
    "classes file of another header": Case(lambda r: roboflow_split(r, classes=["id, name", "0, background"]),
                                           r"_classes.csv: row 1 is 'id, name', not the header 'Pixel Value, Class'"),  # fmt: skip
    "no classes": Case(lambda r: roboflow_split(r, classes=["Pixel Value, Class"]), r"_classes.csv: the file lists no classes"),
    "class pixel value 255": Case(lambda r: roboflow_split(r, classes=["Pixel Value, Class", "0, background", "255, edge"]),
                                  r"row 3 \('255, edge'\): Pixel Value: 255 is not in 0..254"),  # fmt: skip
    "class pixel value not a number": Case(lambda r: roboflow_split(r, classes=["Pixel Value, Class", "one, wall"]), r"Pixel Value: 'one' is not a whole number"),
    "pixel value twice": Case(lambda r: roboflow_split(r, classes=["Pixel Value, Class", "0, background", "0, wall"]),
                              r"the pixel values \[0\] are listed more than once"),  # fmt: skip
    "every mask damaged": Case(lambda r: (roboflow_split(r), (r / "a_mask.png").unlink(), {"images_dir": r})[2], r"a_mask.png: image 0 .*is not in",
                               skip_message=r"the train split has no images \(all 1 dropped: \{'mask file missing': 1\}\)"),  # fmt: skip
}


def _dataset(kwargs: dict[str, Any], **extra: Any) -> RoboflowMaskDataset | MaskFolderDataset:
    return (MaskFolderDataset if "masks_dir" in kwargs else RoboflowMaskDataset)(**kwargs, **extra)


def test_every_named_problem_has_a_case() -> None:
    kinds = {case.kind for case in CASES.values() if case.kind}
    assert kinds >= {"mask file missing", "mask file unreadable", "mask not 8-bit single-channel", "mask size differs from the image",
                     "mask value unknown", "image file unreadable"}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_raise_names_the_file_the_record_and_the_field(case: str, tmp_path: Path) -> None:
    expected = CASES[case]
    kwargs = expected.build(tmp_path / "train")
    with pytest.raises(DatasetError, match=expected.message) as error:
        _dataset(kwargs, name="train")
    assert str(tmp_path) in str(error.value)
    if expected.kind:
        assert "data.on_invalid=skip" in str(error.value)


@pytest.mark.parametrize("case", list(CASES))
def test_skip_drops_exactly_the_damaged_images_and_counts_them(case: str, tmp_path: Path) -> None:
    expected = CASES[case]
    kwargs = expected.build(tmp_path / "train")
    if expected.kind is None:
        with pytest.raises(DatasetError, match=expected.skip_message or expected.message):
            _dataset(kwargs, on_invalid="skip", name="train")
        return
    with pytest.warns(UserWarning, match=r"data.on_invalid=skip dropped \d+ records"):
        dataset = _dataset(kwargs, on_invalid="skip", name="train")
    report = dataset.report
    assert report.counts == {expected.kind: expected.dropped}
    assert report.images - report.images_kept == expected.dropped == len(report.dropped)
    assert all(p.file and p.record and p.field and p.message for p in report.dropped)
    assert len(dataset) == report.images_kept >= 1
    assert all(isinstance(dataset[i].target, SegmentationTarget) for i in range(len(dataset)))


# --- What a good split gives ---


def test_roboflow_classes_ids_and_masks(tmp_path: Path) -> None:
    roboflow_split(tmp_path, ("b.jpg", "a.jpg"))
    save_mask(tmp_path / "stray_mask.png")
    with pytest.warns(UserWarning, match=r"1 files ignored \(masks \('\*_mask.png'\) without an image\): 'stray_mask.png'"):
        dataset = RoboflowMaskDataset(tmp_path, name="train")
    assert [(c.id, c.name) for c in dataset.label_map.categories] == [(0, "background"), (1, "wall"), (2, "road")]  # pixel-value order
    assert dataset.categories == [{"id": 0, "name": "background"}, {"id": 1, "name": "wall"}, {"id": 2, "name": "road"}]
    assert {i: (r["file_name"], r["mask_file"]) for i, r in dataset.images.items()} == {0: ("a.jpg", "a_mask.png"), 1: ("b.jpg", "b_mask.png")}
    assert dataset.report.annotation_file == str(tmp_path / "_classes.csv")
    sample = dataset[1]
    assert sample.image.shape == (24, 32, 3) and sample.target.size == (24, 32) and sample.target.file_name == "b.jpg"
    assert sample.target.mask.dtype == torch.int64 and sample.target.mask.shape == (24, 32)
    assert torch.equal(sample.target.mask, torch.from_numpy(halves_mask().astype(np.int64)))  # 255 kept: unlabelled


def test_a_palette_mask_is_read_as_its_indices_not_its_colours(tmp_path: Path) -> None:
    two_halves(tmp_path / "a.jpg", SIZE)
    save_mask(tmp_path / "a_mask.png", mode="P")
    write_csv(tmp_path, CLASSES)
    with Image.open(tmp_path / "a_mask.png") as mask:
        assert mask.mode == "P" and mask.convert("RGB").getpixel((0, 5)) != (1, 1, 1)
    mask = RoboflowMaskDataset(tmp_path)[0].target.mask
    assert torch.equal(mask, torch.from_numpy(halves_mask().astype(np.int64)))


def test_the_augmentation_moves_the_mask_with_the_image(tmp_path: Path) -> None:
    roboflow_split(tmp_path)
    flipped = RoboflowMaskDataset(tmp_path, transform=A.Compose([A.HorizontalFlip(p=1)]))[0]
    # The red half moved right; so did class 1.
    assert flipped.image[12, -1, 0] > 200 and flipped.image[12, 0, 2] > 200
    assert flipped.target.mask[12, -1] == 1 and flipped.target.mask[12, 0] == 2
    assert torch.equal(flipped.target.mask, torch.from_numpy(halves_mask()[:, ::-1].astype(np.int64)))
    resized = RoboflowMaskDataset(tmp_path, transform=A.Compose([A.Resize(12, 16)]))[0]
    assert resized.image.shape == (12, 16, 3) and resized.target.size == (12, 16) and resized.target.mask.shape == (12, 16)
    assert set(resized.target.mask.unique().tolist()) == {1, 2, IGNORE_INDEX}  # nearest: no blended values


def test_mask_folder_pairs_images_and_masks_by_name(tmp_path: Path) -> None:
    for name in ("a", "scene/b"):
        two_halves(tmp_path / "images" / f"{name}.jpg", SIZE)
        save_mask(tmp_path / "masks" / f"{name}_label.png")
    save_mask(tmp_path / "masks" / "orphan_label.png")
    with pytest.warns(UserWarning, match=r"1 files ignored \(masks without an image\): 'orphan_label.png'"):
        dataset = MaskFolderDataset(tmp_path / "images", tmp_path / "masks", classes=["background", "wall", "road"], mask_suffix="_label.png")
    assert {i: (r["file_name"], r["mask_file"]) for i, r in dataset.images.items()} == {0: ("a.jpg", "a_label.png"), 1: ("scene/b.jpg", "scene/b_label.png")}
    assert [(c.id, c.name) for c in dataset.label_map.categories] == [(0, "background"), (1, "wall"), (2, "road")]
    assert dataset.report.annotation_file == str(tmp_path / "masks")
    assert torch.equal(dataset[1].target.mask, torch.from_numpy(halves_mask().astype(np.int64)))


def test_mask_folder_classes_from_a_classes_file(tmp_path: Path) -> None:
    two_halves(tmp_path / "images" / "a.png", SIZE)
    save_mask(tmp_path / "masks" / "a.png")
    classes_file = write_csv(tmp_path, CLASSES)
    dataset = MaskFolderDataset(tmp_path / "images", tmp_path / "masks", classes_file=classes_file)
    assert [c.name for c in dataset.label_map.categories] == ["background", "wall", "road"]
    assert dataset.report.annotation_file == str(classes_file)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"give the classes either as classes_file .* or as classes .*exactly one of the two"),
        ({"classes": ["a"], "classes_file": "x.csv"}, r"exactly one of the two"),
        ({"classes": []}, r"data.train.classes is empty"),
        ({"classes": ["wall", "wall"]}, r"names \['wall'\] more than once"),
        ({"classes": ["wall"], "masks_dir": "images"}, r"masks_dir is the images folder"),
    ],
)
def test_mask_folder_settings_that_cannot_work(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    two_halves(tmp_path / "images" / "a.png", SIZE)
    save_mask(tmp_path / "masks" / "a.png")
    kwargs = {"masks_dir": tmp_path / "masks", **kwargs}
    kwargs["masks_dir"] = tmp_path / kwargs["masks_dir"]
    with pytest.raises(ConfigError, match=message):
        MaskFolderDataset(tmp_path / "images", name="train", **kwargs)


def test_an_exif_rotated_photo_takes_a_mask_of_its_upright_size(tmp_path: Path) -> None:
    exif_rotated_jpeg(tmp_path / "a.jpg", stored=(40, 30))  # shown 30 wide, 40 high
    save_mask(tmp_path / "a_mask.png", np.ones((40, 30), np.uint8))
    write_csv(tmp_path, CLASSES)
    sample = RoboflowMaskDataset(tmp_path)[0]
    assert sample.image.shape == (40, 30, 3) and sample.target.mask.shape == (40, 30)


def test_mask_values_are_cached_with_the_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roboflow_split(tmp_path, ("a.jpg", "b.jpg"))
    cache_file = tmp_path / "cache" / "headers.json"  # not in the split folder, where it would be an ignored file
    decoded: list[Path] = []
    original = semantic_segmentation.mask_values
    monkeypatch.setattr(semantic_segmentation, "mask_values", lambda path: decoded.append(path) or original(path))
    RoboflowMaskDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert [p.name for p in decoded] == ["a_mask.png", "b_mask.png"]
    RoboflowMaskDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert len(decoded) == 2  # a second run decodes no mask
    _set(tmp_path / "b_mask.png", 0)
    RoboflowMaskDataset(tmp_path, header_cache=validation.ImageHeaderCache(cache_file))
    assert [p.name for p in decoded[2:]] == ["b_mask.png"]


def _broken_after_validation(tmp_path: Path, on_invalid: str) -> RoboflowMaskDataset:
    dataset = RoboflowMaskDataset(**roboflow_split(tmp_path, ("a.jpg", "b.jpg")), on_invalid=on_invalid)  # type: ignore[arg-type]
    mask = tmp_path / "b_mask.png"
    mask.write_bytes(mask.read_bytes()[:60])  # the disk changed under the run
    return dataset


def test_a_mask_broken_after_validation_fails_naming_it(tmp_path: Path) -> None:
    dataset = _broken_after_validation(tmp_path, "raise")
    assert dataset[0].target.mask.shape == (24, 32)
    with pytest.raises(DatasetError, match=r"b_mask.png: the mask of image 1 \('b.jpg'\) cannot be read .* it passed validation before training"):
        dataset[1]


def test_under_skip_a_mask_broken_after_validation_is_left_out(tmp_path: Path) -> None:
    skipped = _broken_after_validation(tmp_path, "skip")[1]
    assert isinstance(skipped, UnreadableImage) and skipped.path.endswith("b_mask.png") and skipped.reason


def test_splits_with_different_classes_are_refused(tmp_path: Path) -> None:
    train = RoboflowMaskDataset(**roboflow_split(tmp_path / "train"), name="train")
    val = RoboflowMaskDataset(**roboflow_split(tmp_path / "val", classes=[*CLASSES[:3], "1, floor"]), name="val")
    with pytest.raises(DatasetError, match=r"the val split's categories differ from the train split's .* only in val: \[\(1, 'floor'\)\]"):
        validation.check_same_categories({"train": train, "val": val})


# --- The real data ---


@needs_indoor_seg
def test_the_indoor_seg_splits_read_whole() -> None:
    started = time.perf_counter()
    datasets = {split: RoboflowMaskDataset(INDOOR_SEG / split, name=split) for split in ("train", "valid", "test")}
    seconds = time.perf_counter() - started
    assert [len(d) for d in datasets.values()] == [240, 60, 60]
    names = ["background", "cabinet", "ceiling", "chair", "door", "elevator", "railing", "road", "stair", "tree", "wall"]
    for dataset in datasets.values():
        assert [(c.id, c.name) for c in dataset.label_map.categories] == list(enumerate(names))
        assert dataset.report.dropped == [] and dataset.report.images == len(dataset)
    validation.check_same_categories(datasets)
    sample = datasets["valid"][0]
    assert sample.image.shape == (640, 640, 3) and sample.target.mask.shape == (640, 640)
    assert set(sample.target.mask.unique().tolist()) <= set(range(11))
    # Every mask decoded once: about 5 ms a pair on two cores (the docstring of cvexp.data.semantic_segmentation).
    assert seconds < 20, f"validating 360 images and masks took {seconds:.1f} s"


def test_a_data_config_builds_the_reader_with_hydra(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from cvexp.errors import instantiate

    two_halves(tmp_path / "images" / "a.jpg", SIZE)
    save_mask(tmp_path / "masks" / "a.png")
    config = OmegaConf.create({"_target_": "cvexp.data.semantic_segmentation.MaskFolderDataset", "_partial_": True,
                               "classes": ["background", "wall", "road"]})  # fmt: skip
    dataset = instantiate(config)(images_dir=str(tmp_path / "images"), masks_dir=str(tmp_path / "masks"), name="train")
    assert [c.name for c in dataset.label_map.categories] == ["background", "wall", "road"]  # a ListConfig of names reads as a list
    with pytest.raises(DatasetError, match=r"nowhere: masks folder not found \(not a folder\)\. Fix: point data.train.masks_dir"):
        instantiate(config)(images_dir=str(tmp_path / "images"), masks_dir=str(tmp_path / "nowhere"), name="train")
