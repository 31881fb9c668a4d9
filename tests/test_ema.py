"""``callbacks=ema``: the averaged weights are what validation, the checkpoints and the model artifact hold."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cvexp.models.ema import EmaUpdate
from cvexp.training import run_training
from tests.conftest import compose_train_config


def test_the_update_moves_the_average_by_one_minus_the_warmed_up_decay() -> None:
    update = EmaUpdate(decay=0.9, warmup_steps=10)
    assert update.decay_at(10) == pytest.approx(0.9 * (1 - math.exp(-1)))
    assert EmaUpdate(decay=0.9, warmup_steps=0).decay_at(1) == 0.9
    averaged, current, counter = [torch.zeros(3)], [torch.ones(3)], [torch.tensor([7])]
    update(averaged + counter, current + [torch.tensor([8])], torch.tensor(4))  # the 5th update
    assert torch.allclose(averaged[0], torch.full((3,), 1 - update.decay_at(5)))
    assert counter[0].item() == 8  # integer buffers take the latest value
    with pytest.raises(ValueError, match=r"callbacks.ema.decay=1.5"):
        EmaUpdate(decay=1.5)


def test_the_checkpoint_and_the_artifact_hold_the_average(tmp_path: Path, shared_data_dir: Path) -> None:
    # A short warm-up, so that the average lags the raw weights clearly after a few steps.
    cfg = compose_train_config(tmp_path, shared_data_dir, ["debug=smoke", "logger=none", "callbacks=ema", "callbacks.ema.decay=0.9",
                                                           "callbacks.ema.warmup_steps=2", "test_after_fit=false"])  # fmt: skip
    summary = run_training(cfg)

    checkpoint = torch.load(summary.best_model_path, map_location="cpu", weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys() and "averaging_state" in checkpoint  # a resume restores both
    changed = [name for name, tensor in averaged.items() if tensor.is_floating_point() and not torch.equal(tensor, raw[name])]
    assert len(changed) > len(averaged) // 2, "the averaged weights should differ from the raw ones"
    artifact = load_file(summary.artifact_dir / "model.safetensors")
    name = next(n for n in changed if n.removeprefix("model.") in artifact)
    assert torch.equal(artifact[name.removeprefix("model.")], averaged[name])  # the artifact is the EMA model
    assert not torch.equal(artifact[name.removeprefix("model.")], raw[name])
