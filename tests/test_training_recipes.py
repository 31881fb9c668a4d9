"""The recipe features of the frontier detectors, each usable with every model (EMA is tests/test_ema.py):

- ``decay_norms_and_biases=false``: biases and normalisation weights train without weight decay;
- ``sampler=repeat_factor``: images of rare classes are read more often, at the computed rate, sharded across ranks;
- ``multi_scale=rt_detr``: training batches come at several sizes, evaluation at ``data.image_size``.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from cvexp.data import Category, LabelMap
from cvexp.data.sampling import EpochSampler, RepeatFactorSampling
from cvexp.models.task_module import VisionTaskModule
from cvexp.training import build_training
from tests.conftest import compose_train_config

SHAPES = LabelMap([Category(1, "circle"), Category(2, "square"), Category(3, "triangle")])


def test_biases_and_norm_weights_can_train_without_weight_decay(tmp_path: Path) -> None:
    cfg = compose_train_config(tmp_path, tmp_path, ["model=deimv2"])
    built = instantiate(cfg.model, label_map=SHAPES)
    adapter = instantiate(cfg.adapter, label_map=SHAPES)
    module = VisionTaskModule(built.model, adapter, optimizer=partial(torch.optim.AdamW, lr=0.1, weight_decay=0.5), backbone_lr_scale=0.1,
                              backbone_modules=built.backbone_modules, decay_norms_and_biases=False)  # fmt: skip
    optimizer = module.configure_optimizers()
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    names = {id(p): n for n, p in built.model.named_parameters()}
    for name, group in groups.items():
        exempt = name.endswith("_no_decay")
        assert group["weight_decay"] == (0.0 if exempt else 0.5)
        assert group["lr"] == pytest.approx(0.01 if name.startswith("backbone") else 0.1)
        assert all((p.ndim <= 1 or names[id(p)].endswith(".bias")) == exempt for p in group["params"])
    assert any("norm" in names[id(p)] for p in groups["head_no_decay"]["params"])  # the decoder's norms are among them
    # A step without gradients: AdamW only decays, so the exempt parameters stay, the others shrink.
    before = {id(p): p.detach().clone() for group in optimizer.param_groups for p in group["params"]}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for name, group in groups.items():
        moved = [not torch.equal(p, before[id(p)]) for p in group["params"] if bool(before[id(p)].abs().sum())]
        assert (not any(moved)) if name.endswith("_no_decay") else all(moved), name

    default = VisionTaskModule(built.model, adapter, optimizer=partial(torch.optim.AdamW, lr=0.1), backbone_modules=built.backbone_modules)
    assert [group["name"] for group in default.parameter_groups()] == ["head", "backbone"]  # every parameter decays, as before


def test_repeat_factors_follow_the_lvis_rule() -> None:
    # 100 images: "common" in all of them, "rare" in 4 (f = 0.04), "some" in 30 (f = 0.3), 6 images of nothing.
    classes = [{1} | ({2} if i < 4 else set()) | ({3} if i < 30 else set()) for i in range(94)] + [set()] * 6
    sampling = RepeatFactorSampling(threshold=0.16)
    assert sampling.class_factors(classes) == pytest.approx({1: 1.0, 2: math.sqrt(0.16 / 0.04), 3: 1.0})  # 2.0 for the rare class
    factors = sampling.image_factors(classes)
    assert factors[:4] == pytest.approx([2.0] * 4) and factors[4:] == pytest.approx([1.0] * 96)
    with pytest.raises(ValueError, match="data.sampler.threshold=0"):
        RepeatFactorSampling(threshold=0)


def test_rare_class_images_are_read_at_their_repeat_factor_on_every_rank() -> None:
    size = 50
    factors = np.ones(size)
    factors[:5] = 2.0  # read exactly twice per epoch
    factors[5:10] = 1.5  # once or twice: 1.5 times on average
    expected_length = round(factors.sum())  # 57.5 -> 58 reads per epoch, every epoch
    reads: Counter[int] = Counter()
    epochs = 400
    for epoch in range(epochs):
        shares = []
        for rank in range(2):
            sampler = EpochSampler(size, seed=7, rank=rank, world_size=2, repeat_factors=factors)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert len(shares[0]) == len(shares[1]) == math.ceil(expected_length / 2)  # the same number of steps on both ranks
        whole = shares[0] + shares[1]
        assert len(whole) == expected_length
        # Copies of an image come as distinct indices (i + k * size), which the dataset reads as image i.
        assert len(set(whole)) == len(whole)
        reads.update(index % size for index in whole)
    rate = {index: reads[index] / epochs for index in range(size)}
    assert all(rate[i] == pytest.approx(2.0, abs=0.06) for i in range(5))
    assert all(rate[i] == pytest.approx(1.5, abs=0.12) for i in range(5, 10))
    assert all(rate[i] == pytest.approx(1.0, abs=0.06) for i in range(10, size))
    # The order is a function of (seed, epoch): a resumed run reads the same.
    again = EpochSampler(size, seed=7, rank=0, world_size=2, repeat_factors=factors)
    again.set_epoch(epochs - 1)
    assert list(again) == shares[0]


def test_the_training_loader_reads_repeated_images_with_their_own_augmentation(tmp_path: Path, shared_data_dir: Path) -> None:
    # threshold 1: every class in fewer than all images is repeated (the shapes' classes are balanced, none is rare).
    cfg = compose_train_config(tmp_path, shared_data_dir, ["sampler=repeat_factor", "sampler.threshold=1.0", "data.batch_size=4"])
    _, datamodule = build_training(cfg)
    factors = datamodule.repeat_factors()
    dataset = datamodule.datasets["train"]
    assert len(factors) == len(dataset) and (factors > 1).any()
    loader = datamodule.train_dataloader()
    assert len(loader.sampler) == round(factors.sum()) > len(dataset)
    assert len(datamodule.val_dataloader().sampler) == len(datamodule.datasets["val"])  # evaluation reads every image once
    # The second read of an image is that image, augmented afresh (the draws are seeded: this is deterministic).
    pairs = [(dataset[index], dataset[index + len(dataset)]) for index in range(10)]
    assert all(first.target.image_id == second.target.image_id for first, second in pairs)
    assert any(not np.array_equal(first.image, second.image) for first, second in pairs)


def test_multi_scale_batches_vary_in_size_and_evaluation_stays_at_the_image_size(tmp_path: Path, shared_data_dir: Path) -> None:
    cfg = compose_train_config(tmp_path, shared_data_dir, ["multi_scale=rt_detr", "data.batch_size=4", "seed=3"])
    torch.manual_seed(0)
    _, datamodule = build_training(cfg)
    assert datamodule.train_collate_fn.pixels.sizes == [64, 96, 128]  # 0.75-1.25 of 96 px, in multiples of 32
    sizes = [tuple(batch["pixel_values"].shape[-2:]) for batch, _ in zip(datamodule.train_dataloader(), range(20), strict=False)]
    assert len(set(sizes)) > 1 and set(sizes) <= {(64, 64), (96, 96), (128, 128)}  # RT-DETR stretches to a square
    assert {tuple(batch["pixel_values"].shape[-2:]) for batch in datamodule.val_dataloader()} == {(96, 96)}
