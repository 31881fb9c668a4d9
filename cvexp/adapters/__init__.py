"""OutputAdapters: one per model family, behind a registry other packages can extend."""

from cvexp.adapters.base import AdaptedOutput, Detections, OutputAdapter
from cvexp.adapters.detr import DetrAdapter, SigmoidDetrAdapter
from cvexp.adapters.registry import available_adapters, create_adapter, register_adapter

register_adapter("detr", DetrAdapter)
register_adapter("sigmoid_detr", SigmoidDetrAdapter)

__all__ = [
    "AdaptedOutput",
    "Detections",
    "DetrAdapter",
    "OutputAdapter",
    "SigmoidDetrAdapter",
    "available_adapters",
    "create_adapter",
    "register_adapter",
]
