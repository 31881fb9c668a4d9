"""Data for every task: readers that validate up front, samples and targets, the DataModule, augmentation, synthetic data.

The names below are imported when first used (PEP 562), so that the torch-free modules of this
package (:mod:`cvexp.data.images`, :mod:`cvexp.data.validation`) load without torch: a served ONNX
model decodes its requests with them (:mod:`cvexp.deployment.exported_model`).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_EXPORTS = {
    "CocoDetectionDataset": "coco", "CocoSplit": "coco", "BatchCollator": "collate", "VisionDataModule": "datamodule",
    "HfDetectionDataset": "formats", "VocDetectionDataset": "formats", "YoloDetectionDataset": "formats",
    "UnreadableImage": "images", "load_rgb_image": "images", "Category": "labels", "LabelMap": "labels",
    "ClassificationTarget": "targets", "DetectionTarget": "targets", "Sample": "targets", "SegmentationTarget": "targets",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "DatasetError":
        from cvexp.errors import DatasetError

        return DatasetError
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cvexp.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cvexp.data.{_EXPORTS[name]}"), name)


__all__ = sorted([*_EXPORTS, "DatasetError"])
