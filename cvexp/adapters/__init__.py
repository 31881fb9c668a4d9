"""OutputAdapters: one per model family, behind a registry other packages can extend."""

from cvexp.adapters.base import AdaptedOutput, Detections, OutputAdapter
from cvexp.adapters.detr import DetrAdapter, SigmoidDetrAdapter
from cvexp.adapters.registry import available_adapters, create_adapter, register_adapter
from cvexp.adapters.rt_detr import RtDetrAdapter

register_adapter("detr", DetrAdapter)
register_adapter("sigmoid_detr", SigmoidDetrAdapter)
register_adapter("rt_detr", RtDetrAdapter)

__all__ = [
    "AdaptedOutput",
    "Detections",
    "DetrAdapter",
    "OutputAdapter",
    "RtDetrAdapter",
    "SigmoidDetrAdapter",
    "available_adapters",
    "create_adapter",
    "register_adapter",
]
