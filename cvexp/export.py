"""Export a model: ``python -m cvexp.export ckpt_path=<run dir>/model [opset=18] [gate.tolerance=0.005]``.

Thin entry point: compose the config, then hand it to :func:`cvexp.deployment.export.run_export`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from cvexp.deployment.export import run_export

    run_export(cfg)


if __name__ == "__main__":
    main()
