"""Building Hugging Face detectors from config: their backbone options and head initialisation.

Starting from pretrained weights: tests/test_pretrained.py.

That every model option builds from its config with the data's classes, CPU-sized: tests/test_model_zoo.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cvexp.data import Category, LabelMap
from tests.conftest import compose_train_config

LABEL_MAP = LabelMap([Category(1, "rbc"), Category(2, "wbc")])


def _model_cfg(tmp_path: Path, model: str, *overrides: str):
    return compose_train_config(tmp_path, tmp_path, [f"model={model}", *overrides]).model


def test_from_scratch_backbone_trains_with_batch_norm(tmp_path: Path) -> None:
    detector = instantiate(_model_cfg(tmp_path, "conditional_detr"), label_map=LABEL_MAP)
    modules = list(detector.model.model.backbone.modules())
    assert not any(type(m).__name__.endswith("FrozenBatchNorm2d") for m in modules)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    assert all(p.requires_grad for p in detector.model.model.backbone.parameters())


def test_frozen_backbone_keeps_model_defaults(tmp_path: Path) -> None:
    cfg = _model_cfg(tmp_path, "detr", "model.train_backbone=false", "model.trainable_batch_norm=false")
    detector = instantiate(cfg, label_map=LABEL_MAP)
    assert not any(p.requires_grad for p in detector.model.model.backbone.parameters())
    assert any(type(m).__name__.endswith("FrozenBatchNorm2d") for m in detector.model.modules())


def test_from_scratch_heads_start_at_the_focal_prior_and_the_reference_points(tmp_path: Path) -> None:
    detector = instantiate(_model_cfg(tmp_path, "conditional_detr"), label_map=LABEL_MAP)
    classifier = detector.model.class_labels_classifier
    assert torch.allclose(classifier.bias.sigmoid(), torch.full_like(classifier.bias, 0.01))
    last_box_layer = detector.model.bbox_predictor.layers[-1]
    assert not last_box_layer.weight.any() and not last_box_layer.bias.any()


def test_an_initializer_naming_a_missing_module_says_which(tmp_path: Path) -> None:
    from cvexp.models.initialization import focal_prior_bias

    detector = instantiate(_model_cfg(tmp_path, "detr"), label_map=LABEL_MAP)
    with pytest.raises(ValueError, match="has no submodule 'classifier_head'"):
        focal_prior_bias(detector.model, "classifier_head")


def test_rt_detr_batch_norms_start_at_pytorch_s_init(tmp_path: Path) -> None:
    # transformers draws their scale from N(0, 0.01); the model YAML's initializer resets them.
    detector = instantiate(_model_cfg(tmp_path, "rt_detr"), label_map=LABEL_MAP)
    norms = [m for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 40 and all(bool((norm.weight == 1).all()) for norm in norms)
