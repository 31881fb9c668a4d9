"""COCO-format data: datasets, the Lightning DataModule, augmentation and the synthetic generator."""

from cvexp.data.coco import (
    Category,
    CocoDetectionDataset,
    CocoSplit,
    DatasetError,
    DetectionSample,
    DetectionTarget,
    LabelMap,
)
from cvexp.data.collate import DetectionCollator
from cvexp.data.datamodule import CocoDetectionDataModule

__all__ = [
    "Category",
    "CocoDetectionDataModule",
    "CocoDetectionDataset",
    "CocoSplit",
    "DatasetError",
    "DetectionCollator",
    "DetectionSample",
    "DetectionTarget",
    "LabelMap",
]
