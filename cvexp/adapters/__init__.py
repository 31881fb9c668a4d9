"""OutputAdapters: one per model family, behind a registry other packages can extend."""

from cvexp.adapters.base import AdaptedOutput, OutputAdapter
from cvexp.adapters.classification import ImageClassificationAdapter
from cvexp.adapters.detr import DetrAdapter, DetrSegmentationAdapter, SigmoidDetrAdapter
from cvexp.adapters.mask_classification import MaskClassificationAdapter
from cvexp.adapters.predictions import ClassScores, Detections, SegmentationMap
from cvexp.adapters.registry import available_adapters, create_adapter, register_adapter
from cvexp.adapters.rt_detr import RtDetrAdapter
from cvexp.adapters.semantic_segmentation import SemanticSegmentationAdapter

register_adapter("detr", DetrAdapter)
register_adapter("detr_segmentation", DetrSegmentationAdapter)
register_adapter("sigmoid_detr", SigmoidDetrAdapter)
register_adapter("rt_detr", RtDetrAdapter)
register_adapter("image_classification", ImageClassificationAdapter)
register_adapter("semantic_segmentation", SemanticSegmentationAdapter)
register_adapter("mask_classification", MaskClassificationAdapter)

__all__ = [
    "AdaptedOutput",
    "ClassScores",
    "Detections",
    "DetrAdapter",
    "DetrSegmentationAdapter",
    "ImageClassificationAdapter",
    "MaskClassificationAdapter",
    "OutputAdapter",
    "RtDetrAdapter",
    "SegmentationMap",
    "SemanticSegmentationAdapter",
    "SigmoidDetrAdapter",
    "available_adapters",
    "create_adapter",
    "register_adapter",
]
