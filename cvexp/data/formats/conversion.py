"""The ``cvexp.convert`` job: every split of a data option, read and validated as training reads it, written in another layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from cvexp.data.validation import validation_table
from cvexp.errors import ConfigError


def run_conversion(cfg: DictConfig) -> Path:
    """Reads each split of ``cfg.data`` (validation included: ``data.on_invalid`` decides about bad records) and writes them with ``cfg.convert_to``.

    Returns what the writer returns (the output folder, or the YOLO ``data.yaml``).
    """
    from rich.console import Console

    out = Path(str(cfg.out))
    if out.exists() and any(out.iterdir()) and not cfg.get("overwrite"):
        raise ConfigError(f"out={out} is not empty. Fix: choose an empty or new folder, or set overwrite=true.")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    splits: dict[str, tuple[dict[str, Any], Path]] = {}
    for name, dataset in datamodule.datasets.items():
        if not hasattr(dataset, "coco_content"):
            raise ConfigError(f"data: {type(dataset).__name__} holds no boxes to convert; cvexp.convert converts detection data.")
        splits[name] = (dataset.coco_content(), dataset.images_dir)
    written = instantiate(cfg.convert_to)(splits, out)
    console = Console()
    console.print(validation_table(datamodule.validation_reports))
    console.print(f"wrote {sum(len(content['images']) for content, _ in splits.values())} images, "
                  f"{sum(len(content['annotations']) for content, _ in splits.values())} annotations -> {written}")  # fmt: skip
    return Path(written)
