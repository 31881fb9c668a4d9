"""Initialisations that a model YAML can ask for (``model.initializers``), of heads and batch norms.

Hugging Face builds detection heads with a generic initialisation. The papers' reference code of
the sigmoid/focal-loss DETR family (Conditional, Deformable, DAB-DETR) sets two things that HF
leaves out, and from random init they decide how soon training gets going:

- the classifier bias starts at the focal-loss prior (RetinaNet, Lin et al. 2017), so every query
  starts out saying "probably background" instead of 50 % of every class;
- the last layer of the box head starts at zero, so the first boxes sit on the reference points.

transformers' RT-DETR and RT-DETRv2 go the other way for their batch norms: they draw the scale of
every one outside the backbone from N(0, 0.01), where PyTorch and the reference code start at 1;
:func:`reset_batch_norm` gives them PyTorch's start back.

Each function takes the model and names the submodule it changes, so a YAML chooses the module by
its attribute path (``class_labels_classifier``) and Python never branches on the model family.
A path may name a ``ModuleList`` of heads (one per decoder layer, as in Deformable DETR): each head
is initialised.
"""

from __future__ import annotations

import math

import torch


def focal_prior_bias(model: torch.nn.Module, classifier: str, prior_probability: float = 0.01) -> None:
    """Sets the bias of the classification layer(s) at ``classifier`` to ``-log((1 - p) / p)``.

    Args:
        model: the detection model.
        classifier: attribute path of the classification layer, e.g. ``class_labels_classifier``
            (or of a ``ModuleList`` of them, e.g. ``class_embed``).
        prior_probability: the initial probability of every class for every query.
    """
    with torch.no_grad():
        for layer in _last_linears(model, classifier):
            layer.bias.fill_(-math.log((1 - prior_probability) / prior_probability))


def zero_last_layer(model: torch.nn.Module, module: str) -> None:
    """Zeroes the weight and bias of the last linear layer of ``module`` (e.g. ``bbox_predictor``),
    or of each head when ``module`` is a ``ModuleList`` of them."""
    with torch.no_grad():
        for layer in _last_linears(model, module):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def reset_batch_norm(model: torch.nn.Module, module: str) -> None:
    """Gives every ``BatchNorm2d`` in ``module`` PyTorch's start: scale 1, shift 0, fresh statistics.

    transformers' RT-DETR (and v2) initialise the batch norms of the hybrid encoder and of the input
    projections with a scale near 0 (N(0, initializer_range = 0.01)), so the features reaching the
    decoder start about 100 times too small; from random init the tiny model then reached
    map 0.06 after 200 steps on the synthetic shapes, and 0.32 with this reset (docs/models.md).
    """
    for layer in _submodule(model, module).modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_parameters()


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"model.initializers: {type(model).__name__} has no submodule '{path}' ({error}); "
                         f"name one of its modules, e.g. from `print(model)`.") from error  # fmt: skip


def _last_linears(model: torch.nn.Module, path: str) -> list[torch.nn.Linear]:
    module = _submodule(model, path)
    heads = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
    last_layers = []
    for head in heads:
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(f"model.initializers: submodule '{path}' of {type(model).__name__} has no linear layer.")
        last_layers.append(linears[-1])
    return last_layers
