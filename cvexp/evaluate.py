"""Evaluate a checkpoint: ``python -m cvexp.evaluate ckpt_path=<run dir>/model [split=test] [data=...]``.

Thin entry point: compose the config, then hand it to :func:`cvexp.evaluation.evaluator.run_evaluation`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@exits_on_user_error
def main(cfg: DictConfig) -> float:
    """Returns the split's mAP (so that a sweep over checkpoints can rank them)."""
    from cvexp.evaluation.evaluator import run_evaluation

    return run_evaluation(cfg).metrics["map"]


if __name__ == "__main__":
    main()
