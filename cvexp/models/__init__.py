"""Models: Hugging Face detector builders and the detection LightningModule."""

from cvexp.models.huggingface import BuiltModel, build_model

__all__ = ["BuiltModel", "build_model"]
