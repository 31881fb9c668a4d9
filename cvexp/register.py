"""Register a checkpoint: ``python -m cvexp.register ckpt_path=<.ckpt> [run_id=...] [promote=true]``.

Thin entry point: compose the config, then hand it to :func:`cvexp.deployment.registry.run_registration`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="register")
def main(cfg: DictConfig) -> None:
    from cvexp.deployment.registry import run_registration

    run_registration(cfg)


if __name__ == "__main__":
    main()
