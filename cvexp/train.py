"""Train a detector: ``python -m cvexp.train [overrides]`` (``--help`` lists the config groups).

Thin entry point: compose the config, then hand it to :func:`cvexp.training.run_training`. The
heavy imports happen inside the task, so ``--help`` and tab completion stay fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@exits_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Returns the optimised metric, which Hydra sweepers minimise or maximise."""
    from cvexp.training import run_training

    return run_training(cfg).optimized_value


if __name__ == "__main__":
    main()
