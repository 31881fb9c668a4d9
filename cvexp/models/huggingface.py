"""Builds Hugging Face detectors from a config (random init) or from pretrained weights (:mod:`cvexp.models.pretrained`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_class

from cvexp.data.labels import LabelMap
from cvexp.errors import ConfigError
from cvexp.models.pretrained import WeightSource, construct_model, load_pretrained

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    """A Hugging Face detection model, the image processor that feeds it, and what cvexp records about it.

    Attributes:
        model: the model, in train mode.
        image_processor: its image processor.
        weights: where its weights started (``random-init`` or the pretrained checkpoint).
        backbone_modules: attribute paths of its backbone (learning-rate group, freezing).
    """

    model: Any
    image_processor: Any
    weights: WeightSource = field(default_factory=WeightSource)
    backbone_modules: tuple[str, ...] = ()


def build_model(
    model_class: str,
    label_map: LabelMap,
    config: Any | None = None,
    image_processor: Any | None = None,
    pretrained: str | None = None,
    allow_partial_load: bool = False,
    backbone_modules: Sequence[str] = (),
    train_backbone: bool | None = None,
    trainable_batch_norm: bool = False,
    initializers: Sequence[Callable[[torch.nn.Module], None]] = (),
    hub_name: str | None = None,
) -> BuiltModel:
    """Builds a detector whose classification head matches ``label_map``.

    Args:
        model_class: import path of the model class, e.g. ``transformers.DetrForObjectDetection``.
        label_map: the dataset's classes; written into the model config as ``id2label``.
        config: the model config for a randomly initialised model.
        image_processor: the image processor for a model built from ``config`` (and for a pretrained
            directory saved without one).
        pretrained: a hub name or local directory (a cvexp model artifact included) whose weights
            the model starts from, with the head re-initialised for the dataset's classes
            (:func:`cvexp.models.pretrained.load_pretrained`). If it cannot be loaded, or loads only
            in part, the run stops with an error that says why; it never falls back to ``config``.
        allow_partial_load: accept a ``pretrained`` checkpoint of another architecture, or with
            tensors missing or of other shapes (they keep their random start; the log lists them).
        backbone_modules: attribute paths of the model's backbone (e.g. ``model.backbone``; ``vit``
            for YOLOS), declared by the model option: ``train_backbone`` freezes or trains them, and
            ``backbone_lr_scale`` scales their learning rate.
        train_backbone: ``None`` keeps the model's own choice (DETR-style models freeze their
            pretrained backbone's early stages, and with a Hugging Face ResNet backbone the whole
            backbone); ``True`` trains every backbone parameter (needed from random init);
            ``False`` freezes the backbone.
        trainable_batch_norm: replace the backbone's frozen batch norm (DETR-family models freeze
            its statistics, which suits a pretrained backbone) with ``BatchNorm2d`` that learns.
            From random init the frozen layers are identities and leave the backbone without any
            normalisation; learning it trains several times faster (docs/benchmarks.md).
        initializers: callables applied to the freshly built model, e.g. the focal-loss prior of
            :mod:`cvexp.models.initialization`; with ``pretrained``, only the re-initialised layers
            keep their effect (the checkpoint's tensors are copied over the rest).
        hub_name: the pretrained checkpoint users would pick for this model option (docs/models.md).
            It is not loaded unless ``pretrained`` names it: ``model.pretrained=${model.hub_name}``
            (as ``+experiment=finetune_pretrained`` does) fine-tunes it.
    """
    cls = get_class(model_class)
    if pretrained:
        loaded = load_pretrained(cls, str(pretrained), label_map, config, allow_partial_load, tuple(initializers))
        model, weights = loaded.model, loaded.weights
        if loaded.image_processor is not None:
            image_processor = loaded.image_processor
        elif image_processor is None:
            raise ConfigError(f"model.image_processor is needed: model.pretrained={pretrained} has no image processor "
                              "for this model (no preprocessor_config.json). Set model.image_processor.")  # fmt: skip
        else:
            log.info("model.pretrained=%s has no image processor for %s: using model.image_processor (%s)",
                     pretrained, cls.__name__, type(image_processor).__name__)  # fmt: skip
    else:
        if config is None or image_processor is None:
            raise ConfigError("model.config and model.image_processor are required when model.pretrained is not set.")
        config.id2label, config.label2id = label_map.id2label, label_map.label2id
        model, weights = construct_model(cls, config, "model.config"), WeightSource()
        for initialize in initializers:
            initialize(model)
    backbone = tuple(str(path) for path in backbone_modules)
    for path in backbone:
        _backbone_module(model, path)  # a wrong path fails here, before anything trains
    _adjust_backbone(model, backbone, train_backbone, trainable_batch_norm)
    return BuiltModel(model=model, image_processor=image_processor, weights=weights, backbone_modules=backbone)


def _backbone_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as error:
        children = [name for name, _ in model.named_children()]
        raise ConfigError(f"model.backbone_modules: {type(model).__name__} has no submodule '{path}' ({error}). Fix: name its "
                          f"backbone by attribute path from the model's top level, whose children are {children}.") from error  # fmt: skip


def backbone_parameter_names(model: torch.nn.Module, backbone_modules: Sequence[str]) -> set[str]:
    """The names (as ``model.named_parameters`` gives them) of the parameters inside ``backbone_modules``."""
    names = set()
    for path in backbone_modules:
        names |= {f"{path}.{name}" for name, _ in _backbone_module(model, path).named_parameters()}
    return names


def _adjust_backbone(model: Any, backbone_modules: tuple[str, ...], trainable: bool | None, trainable_batch_norm: bool) -> None:
    if trainable_batch_norm:
        _unfreeze_batch_norm(model)
    if trainable is not None:
        if not backbone_modules:
            raise ConfigError(f"model.train_backbone={trainable} needs model.backbone_modules (the backbone's attribute paths, "
                              "e.g. [model.backbone]); set them in the model option, or model.train_backbone=null.")  # fmt: skip
        for path in backbone_modules:
            _backbone_module(model, path).requires_grad_(trainable)


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


def register_unpickled_models(module: torch.nn.Module) -> None:
    """Make Hugging Face models unpickled in a new process (a Ray Train worker) record their outputs again.

    transformers 5 registers a model class's ``_can_record_outputs`` (the layers whose outputs become
    ``hidden_states``, ``attentions``) in a per-process registry from ``PreTrainedModel.__init__``, which
    unpickling does not run: in a worker the registry is empty, no capture hooks are installed, and a
    model that needs its encoder's hidden states (SegFormer's decode head) gets ``None`` for them.
    """
    from transformers import PreTrainedModel
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    for submodule in module.modules():
        if isinstance(submodule, PreTrainedModel) and not _CAN_RECORD_REGISTRY.get(submodule):
            _CAN_RECORD_REGISTRY[submodule] = submodule._can_record_outputs
