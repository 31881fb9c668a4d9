"""Data for every task: readers that validate up front, samples and targets, the DataModule, augmentation, synthetic data."""

from cvexp.data.coco import CocoDetectionDataset, CocoSplit
from cvexp.data.collate import BatchCollator
from cvexp.data.datamodule import VisionDataModule
from cvexp.data.formats import HfDetectionDataset, VocDetectionDataset, YoloDetectionDataset
from cvexp.data.images import UnreadableImage, load_rgb_image
from cvexp.data.labels import Category, LabelMap
from cvexp.data.targets import ClassificationTarget, DetectionTarget, Sample, SegmentationTarget
from cvexp.errors import DatasetError

__all__ = [
    "BatchCollator",
    "Category",
    "ClassificationTarget",
    "CocoDetectionDataset",
    "CocoSplit",
    "DatasetError",
    "DetectionTarget",
    "HfDetectionDataset",
    "LabelMap",
    "Sample",
    "SegmentationTarget",
    "UnreadableImage",
    "VisionDataModule",
    "VocDetectionDataset",
    "YoloDetectionDataset",
    "load_rgb_image",
]
