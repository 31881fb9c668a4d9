"""Builds Hugging Face detectors from a pretrained name or from a config (random init)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_class

from cvexp.data.coco import LabelMap

log = logging.getLogger(__name__)


@dataclass
class Detector:
    """A Hugging Face detection model and the image processor that feeds it."""

    model: Any
    image_processor: Any


def build_detector(
    model_class: str,
    label_map: LabelMap,
    config: Any | None = None,
    image_processor: Any | None = None,
    pretrained: str | None = None,
    train_backbone: bool | None = None,
    trainable_batch_norm: bool = False,
    initializers: Sequence[Callable[[torch.nn.Module], None]] = (),
    hub_name: str | None = None,
) -> Detector:
    """Builds a detector whose classification head matches ``label_map``.

    Args:
        model_class: import path of the model class, e.g. ``transformers.DetrForObjectDetection``.
        label_map: the dataset's classes; written into the model config as ``id2label``.
        config: the model config for a randomly initialised model.
        image_processor: the image processor for a model built from ``config``.
        pretrained: a hub name or local directory. When given and loadable, the weights and image
            processor come from it (the head is re-initialised for the dataset's classes); when
            it cannot be loaded (no hub access), the model is built from ``config`` with a warning.
        train_backbone: ``None`` keeps the model's own choice (DETR-style models freeze their
            pretrained backbone's early stages, and with a Hugging Face ResNet backbone the whole
            backbone); ``True`` trains every backbone parameter (needed from random init);
            ``False`` freezes the backbone.
        trainable_batch_norm: replace the backbone's frozen batch norm (DETR-family models freeze
            its statistics, which suits a pretrained backbone) with ``BatchNorm2d`` that learns.
            From random init the frozen layers are identities and leave the backbone without any
            normalisation; learning it trains several times faster (docs/benchmarks.md).
        initializers: callables applied to a model built from ``config`` (random init), e.g. the
            focal-loss prior of :mod:`cvexp.models.initialization`; pretrained weights are left as
            they were trained.
        hub_name: the pretrained checkpoint users would pick for this model option (docs/models.md).
            It is not loaded unless ``pretrained`` names it: ``model.pretrained=${model.hub_name}``
            (as ``+experiment=finetune_pretrained`` does) fine-tunes it.
    """
    cls = get_class(model_class)
    labels = {"id2label": label_map.id2label, "label2id": label_map.label2id}
    if pretrained:
        try:
            from transformers import AutoImageProcessor

            model = cls.from_pretrained(pretrained, ignore_mismatched_sizes=True, **labels)
            _adjust_backbone(model, train_backbone, trainable_batch_norm)
            return Detector(model=model, image_processor=AutoImageProcessor.from_pretrained(pretrained))
        except OSError as error:
            if config is None:
                raise
            log.warning("model.pretrained=%s could not be loaded (%s); building model.config with random weights instead.",
                        pretrained, str(error).splitlines()[0])  # fmt: skip
    if config is None or image_processor is None:
        raise ValueError("model.config and model.image_processor are required when model.pretrained is not set.")
    config.id2label, config.label2id = labels["id2label"], labels["label2id"]
    model = cls(config)
    _adjust_backbone(model, train_backbone, trainable_batch_norm)
    for initialize in initializers:
        initialize(model)
    return Detector(model=model, image_processor=image_processor)


def _adjust_backbone(model: Any, trainable: bool | None, trainable_batch_norm: bool) -> None:
    if trainable_batch_norm:
        _unfreeze_batch_norm(model)
    if trainable is not None:
        for name, parameter in model.named_parameters():
            if "backbone" in name:
                parameter.requires_grad_(trainable)


def _unfreeze_batch_norm(module: torch.nn.Module) -> None:
    """Swaps every ``*FrozenBatchNorm2d`` (each HF DETR-family model defines one) for ``BatchNorm2d``."""
    for name, child in module.named_children():
        if type(child).__name__.endswith("FrozenBatchNorm2d"):
            norm = torch.nn.BatchNorm2d(child.weight.shape[0])
            with torch.no_grad():  # keep whatever statistics it held (pretrained ones, say)
                norm.weight.copy_(child.weight)
                norm.bias.copy_(child.bias)
                norm.running_mean.copy_(child.running_mean)
                norm.running_var.copy_(child.running_var)
            setattr(module, name, norm)
        else:
            _unfreeze_batch_norm(child)
