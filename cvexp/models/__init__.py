"""Models: Hugging Face detector builders and the detection LightningModule."""

from cvexp.models.huggingface import Detector, build_detector

__all__ = ["Detector", "build_detector"]
