"""Shared fixtures: composed configs, a shared synthetic dataset, and the real RBC cells data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No model hub in tests: every model is built from its config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from cvexp.paths import CONFIG_DIR  # noqa: E402

RBC_CELLS = Path(os.environ.get("CVEXP_RBC_CELLS", CONFIG_DIR.parent.parent / "shared" / "datasets" / "rbc-cells"))
needs_rbc = pytest.mark.skipif(
    not (RBC_CELLS / "train" / "_annotations.coco.json").is_file(),
    reason=f"the RBC cells dataset is not at {RBC_CELLS} (set CVEXP_RBC_CELLS to its folder)",
)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic shapes dataset for the whole session (generated on first use)."""
    return tmp_path_factory.mktemp("datasets")


def compose_train_config(tmp_path: Path, data_dir: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Composes a config as ``python -m cvexp.train`` would, with every path under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}/run", *(overrides or [])],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} resolves as in a real run
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def model_tasks() -> dict[str, str]:
    """Each option of conf/model/ and the task it serves: the one its adapter (chosen in its defaults list) speaks."""
    from cvexp.adapters import available_adapters

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        options = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
        tasks = {model: available_adapters()[compose("train", overrides=[f"model={model}"]).adapter.name].task for model in options}
    GlobalHydra.instance().clear()
    return tasks


@pytest.fixture
def train_config(tmp_path: Path, shared_data_dir: Path):
    """A factory: ``train_config(["model=detr", ...])`` -> composed config rooted in ``tmp_path``."""

    def factory(overrides: list[str] | None = None) -> DictConfig:
        return compose_train_config(tmp_path, shared_data_dir, overrides)

    yield factory
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def smoke_artifact(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """The model artifact of one smoke training of the default model on the shapes data (no MLflow), for tests
    that need a trained model but not a particular one."""
    from cvexp.training import run_training

    root = tmp_path_factory.mktemp("smoke-artifact")
    summary = run_training(compose_train_config(root, shared_data_dir, ["debug=smoke", "logger=none", "test_after_fit=false"]))
    GlobalHydra.instance().clear()
    return summary.artifact_dir


def running_processes(name: str) -> int:
    """How many processes of this machine run the program ``name`` (e.g. ``raylet``, ``java``)."""
    import subprocess

    return subprocess.run(["ps", "-eo", "comm"], capture_output=True, text=True, check=True).stdout.split().count(name)
