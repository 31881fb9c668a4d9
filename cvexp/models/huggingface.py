"""Builds Hugging Face detectors from a pretrained name or from a config (random init)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

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
    """
    cls = get_class(model_class)
    labels = {"id2label": label_map.id2label, "label2id": label_map.label2id}
    if pretrained:
        try:
            from transformers import AutoImageProcessor

            model = cls.from_pretrained(pretrained, ignore_mismatched_sizes=True, **labels)
            _set_backbone_trainable(model, train_backbone)
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
    _set_backbone_trainable(model, train_backbone)
    return Detector(model=model, image_processor=image_processor)


def _set_backbone_trainable(model: Any, trainable: bool | None) -> None:
    if trainable is None:
        return
    for name, parameter in model.named_parameters():
        if "backbone" in name:
            parameter.requires_grad_(trainable)
