"""Detect objects in images: ``python -m cvexp.predict ckpt_path=<run dir>/model inputs=<folder | glob | COCO split>``.

Thin entry point: compose the config, then hand it to :func:`cvexp.inference.prediction.run_prediction`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from cvexp.inference.prediction import run_prediction

    run_prediction(cfg)


if __name__ == "__main__":
    main()
