"""The OutputAdapter contract between a model family (of one task) and the rest of cvexp."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cvexp.adapters.predictions import ClassScores, Detections, SegmentationMap
from cvexp.data.labels import LabelMap

#: What an adapter's ``format_predictions`` gives per image, by task.
Prediction = Detections | ClassScores | SegmentationMap


@dataclass
class AdaptedOutput:
    """A model's training signal: the loss to optimise and its named parts to log."""

    loss: torch.Tensor
    loss_parts: dict[str, torch.Tensor]


class OutputAdapter(ABC):
    """Translates between one model family and cvexp's targets and predictions (:mod:`cvexp.data.targets`,
    :mod:`cvexp.adapters.predictions`), which are in the dataset's terms.

    - :meth:`adapt_targets`: dataset targets -> the ``labels`` the model's loss expects.
    - :meth:`adapt_output`: model output -> loss and loss parts.
    - :meth:`format_predictions`: model output -> the task's predictions in original image
      coordinates, unthresholded (mAP needs every detection).

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: whether the model's forward takes ``pixel_mask`` (ViT-style models don't).
    """

    #: The task whose targets and predictions this adapter speaks (a :mod:`cvexp.tasks` name); recorded in the model artifact.
    task: str = "detection"

    def __init__(self, label_map: LabelMap, pass_pixel_mask: bool = True) -> None:
        self.label_map = label_map
        self.pass_pixel_mask = pass_pixel_mask

    def model_inputs(self, batch: dict[str, Any], with_labels: bool = True) -> dict[str, Any]:
        """The keyword arguments of the model's forward for ``batch``."""
        inputs = {"pixel_values": batch["pixel_values"]}
        if self.pass_pixel_mask:
            inputs["pixel_mask"] = batch["pixel_mask"]
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs

    @abstractmethod
    def adapt_targets(self, targets: list[Any], pixel_mask: torch.Tensor | None = None) -> Any:
        """The model's ``labels`` for ``targets``; ``pixel_mask`` (B, H, W) marks where each image lies in the padded
        input, for targets that must be resized with it (masks)."""

    @abstractmethod
    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        """The loss (and its parts) of a forward pass that was given labels."""

    @abstractmethod
    def format_predictions(self, outputs: Any, targets: list[Any]) -> list[Prediction]:
        """Per image, the task's prediction in the image's original pixels (``target.size``) and the dataset's category ids."""

    #: The names of :meth:`exported_outputs`' tensors, the outputs of an exported graph (empty: this adapter cannot export).
    exported_output_names: tuple[str, ...] = ()
    #: How those outputs are read without torch (a reader of :mod:`cvexp.deployment.exported_model`, recorded in ``export.json``).
    exported_format: str = ""

    def exported_outputs(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        """The post-processing that an exported graph (``cvexp.export``) holds after the model: batched
        tensor operations only, so that the exporter can trace them. Adapters without it cannot export."""
        raise NotImplementedError(f"{type(self).__name__} has no exportable post-processing: its models cannot be exported yet "
                                  "(docs/models.md, 'Export').")  # fmt: skip

    def format_exported(self, exported: Sequence[torch.Tensor], targets: list[Any]) -> list[Prediction]:
        """Per image, the task's prediction from :meth:`exported_outputs`' tensors (computed by PyTorch or by an exported graph)."""
        raise NotImplementedError(f"{type(self).__name__} has no exportable post-processing.")
