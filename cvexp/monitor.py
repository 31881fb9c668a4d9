"""Monitor drift: ``python -m cvexp.monitor ckpt_path=<run dir>/model reference=<images> current=<images>``.

Thin entry point: compose the config, then hand it to :func:`cvexp.monitoring.drift.run_monitoring`.
Exits with status 1 when a feature drifts, so that a scheduler or CI job can act on it. The heavy
imports happen inside the task, so ``--help`` stays fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.cli_help import fast_help
from cvexp.errors import exits_on_user_error
from cvexp.paths import CONFIG_DIR

DRIFT_EXIT_CODE = 1


@fast_help  # one config repository for --help's group listing (cvexp/cli_help.py)
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="monitor")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    from cvexp.monitoring.drift import run_monitoring

    if run_monitoring(cfg).drift:
        # SystemExit is not an Exception: Hydra lets it through, after writing the run's files.
        raise SystemExit(DRIFT_EXIT_CODE)


if __name__ == "__main__":
    main()
