"""The read order and the augmentation streams: per epoch, per DDP rank, per DataLoader worker, repeatable after a resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cvexp.data import CocoDetectionDataset, VisionDataModule
from cvexp.data.sampling import EpochSampler
from cvexp.data.shapes import SyntheticShapes


def test_each_rank_reads_its_own_share_padded_to_the_same_length() -> None:
    shares = [list(EpochSampler(5, seed=1, rank=rank, world_size=2)) for rank in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]
    assert sorted(set(shares[0]) | set(shares[1])) == [0, 1, 2, 3, 4]  # every image, one of them twice
    assert list(EpochSampler(5, shuffle=False, rank=1, world_size=2)) == [1, 3, 0]


def test_the_order_depends_on_the_seed_and_the_epoch_only_and_a_resume_skips_what_was_read() -> None:
    sampler = EpochSampler(20, seed=7)
    first = list(sampler)
    assert first == list(EpochSampler(20, seed=7)) and sorted(first) == list(range(20))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(20))
    resumed = EpochSampler(20, seed=7)
    resumed.resume(epoch=1, consumed=8)
    assert list(resumed) == second[8:]
    assert list(resumed) == second  # the skip applies once: the next pass of that epoch is whole


def _datamodule(root: Path, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> VisionDataModule:
    """The train split of 12 shapes images, flipped or not at random, with a stand-in for the trainer's rank."""
    import albumentations as A

    from cvexp.data.augmentation import detection_compose

    SyntheticShapes(str(root), num_train=12, num_val=2, num_test=2)()
    torch.manual_seed(0)  # as seed_everything would: every rank draws the same run seed
    datamodule = VisionDataModule(CocoDetectionDataset, root=str(root), train={"images_dir": "train"}, batch_size=4, num_workers=num_workers,
                                         augmentation=detection_compose([A.HorizontalFlip(p=0.5)]))  # fmt: skip
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    datamodule.collate_fn = lambda samples: samples
    return datamodule


def _flips(datamodule: VisionDataModule, epoch: int = 0, loader=None) -> dict[int, bool]:  # noqa: ANN001
    """Per image read in ``epoch`` (from ``loader``, else a new training loader): was it flipped?"""
    loader = loader or datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    plain = {image_id: datamodule.datasets["train"]._load_image(image_id) for image_id in datamodule.datasets["train"].image_ids}
    flips = {}
    for batch in loader:
        for sample in batch:
            original = plain[sample.target.image_id]
            assert np.array_equal(sample.image, original) or np.array_equal(sample.image, original[:, ::-1])
            flips[sample.target.image_id] = not np.array_equal(sample.image, original)
    return flips


def test_every_rank_and_every_worker_draws_its_own_augmentations(tmp_path: Path) -> None:
    ranks = [_flips(_datamodule(tmp_path / "data", rank=rank, world_size=2)) for rank in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])  # disjoint shares of one order
    flips = [flip for rank in ranks for flip in rank.values()]
    assert 0 < sum(flips) < len(flips)  # not one stream repeated across ranks: some flipped, some not

    single = _flips(_datamodule(tmp_path / "data"))
    workers = _flips(_datamodule(tmp_path / "data", num_workers=2))
    assert single == workers  # each image's augmentation comes from (seed, epoch, image): the same whichever worker reads it
    assert 0 < sum(single.values()) < len(single)
    assert _flips(_datamodule(tmp_path / "data"), epoch=1) != single  # a new draw every epoch


@pytest.mark.parametrize("num_workers", [0, 1])
def test_workers_see_the_epoch_the_sampler_sets(tmp_path: Path, num_workers: int) -> None:
    datamodule = _datamodule(tmp_path / "data", num_workers=num_workers)
    loader = datamodule.train_dataloader()  # one loader: with workers, persistent ones that keep their copy of the dataset
    assert loader.persistent_workers == (num_workers > 0)
    epochs = [_flips(datamodule, epoch, loader) for epoch in (0, 1, 0)]
    assert epochs[0] == epochs[2] != epochs[1]
