"""cvexp: a Hydra-driven experiment framework for fine-tuning Hugging Face vision models.

``cvexp.run(job, overrides)`` runs any job from Python (:mod:`cvexp.api`); the command line is
``python -m cvexp.<job> [overrides]``.
"""

from cvexp.api import run

__version__ = "0.1.0"

__all__ = ["run"]
