"""Inspect a dataset before training: ``python -m cvexp.inspect data=<option>``.

Thin entry point: compose the config, then hand it to :func:`cvexp.data.inspection_report.run_inspection`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="inspect")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from cvexp.data.inspection_report import run_inspection

    run_inspection(cfg)


if __name__ == "__main__":
    main()
