"""Rebuilds a trained detector from a checkpoint written by ``cvexp.train``.

The checkpoint carries the resolved training config and the dataset's categories (see
``DetectionModule.on_save_checkpoint``), so no config file of the original run is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cvexp.adapters.base import OutputAdapter
from cvexp.data.coco import Category, LabelMap


@dataclass
class TrainedDetector:
    """A trained model with everything needed to feed it and read its outputs.

    Attributes:
        model: the Hugging Face model, in eval mode, on ``device``.
        adapter: its output adapter (built with the checkpoint's label map).
        image_processor: the image processor the model was trained with.
        label_map: the dataset's categories the model predicts, in training order.
        config: the resolved training config stored in the checkpoint.
        device: where the model lives.
    """

    model: Any
    adapter: OutputAdapter
    image_processor: Any
    label_map: LabelMap
    config: DictConfig
    device: torch.device

    @property
    def image_size(self) -> int | None:
        """The longer image side the model was trained at (``data.image_size`` of the training run)."""
        return self.config.get("data", {}).get("image_size")


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_trained_detector(ckpt_path: str | Path, device: str = "auto") -> TrainedDetector:
    """Loads ``ckpt_path`` and rebuilds its model, adapter and image processor from the stored config."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file. Pass a .ckpt written by cvexp.train, "
                                f"e.g. outputs/runs/train/<time>/checkpoints/last.ckpt.")  # fmt: skip
    # weights_only=False: a Lightning checkpoint holds more than tensors (loop and callback
    # states). Only load checkpoints you trust.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    stored = checkpoint.get("cvexp") if isinstance(checkpoint, dict) else None
    if not stored or not stored.get("config") or not stored.get("categories"):
        raise ValueError(f"ckpt_path={path}: the checkpoint has no 'cvexp' section with the training config and categories, "
                         "so it was not written by cvexp.train. Evaluate a checkpoint from a cvexp.train run "
                         "(<run dir>/checkpoints/*.ckpt).")  # fmt: skip
    config = OmegaConf.create(stored["config"])
    label_map = LabelMap([Category(int(c["id"]), str(c["name"])) for c in stored["categories"]])
    adapter = instantiate(config.adapter, label_map=label_map)
    detector = instantiate(config.model, label_map=label_map)
    # DetectionModule holds the Hugging Face model as ``self.model``: its weights are "model.*".
    prefix = "model."
    state_dict = {name[len(prefix):]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    detector.model.load_state_dict(state_dict)
    resolved = resolve_device(device)
    model = detector.model.to(resolved).eval()
    return TrainedDetector(model, adapter, detector.image_processor, label_map, config, resolved)
