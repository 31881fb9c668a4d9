"""cvexp: a Hydra-driven experiment framework for fine-tuning Hugging Face detectors."""

__version__ = "0.1.0"
