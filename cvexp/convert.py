"""Convert a dataset: ``python -m cvexp.convert data=<option> out=<folder> [convert_to=coco|yolo]``.

Thin entry point: compose the config, then hand it to :func:`cvexp.data.formats.conversion.run_conversion`.
The heavy imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="convert")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from cvexp.data.formats.conversion import run_conversion

    run_conversion(cfg)


if __name__ == "__main__":
    main()
