"""Detect objects in images: ``python -m cvexp.predict ckpt_path=<.ckpt> inputs=<folder | glob | COCO split>``.

Thin entry point: compose the config, then hand it to :func:`cvexp.evaluation.predictor.run_prediction`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from cvexp.evaluation.predictor import run_prediction

    run_prediction(cfg)


if __name__ == "__main__":
    main()
