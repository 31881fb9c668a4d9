"""MLflow helpers: log a run's resolved config, and tell the user how to browse the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"model.config.d_model": 64, ...}`` (MLflow params)."""
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list) and any(isinstance(item, dict | list) for item in node):
            for index, value in enumerate(node):
                visit(value, f"{prefix}.{index}")
        else:
            flat[prefix] = node

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def log_run_config(logger: Any, cfg: DictConfig, output_dir: Path) -> None:
    """Logs the flattened config as params and the resolved ``config.yaml`` as an artifact."""
    logger.log_hyperparams(flatten_config(cfg))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    logger.experiment.log_artifact(logger.run_id, str(path))


def ui_command(logger: Any) -> str:
    """The shell command that opens the MLflow UI on the logger's store."""
    return f"mlflow ui --backend-store-uri {logger._tracking_uri}"
