"""``python -m cvexp.<job> --help`` lists every config group and its options (see cvexp/cli_help.py).

The expected groups and options come from the files on disk (conf/ and Hydra's own hydra.conf
package) and from the ConfigStore that Hydra's plugins fill, never from a list written here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cvexp.cli_help import FAST_HELP_ENV, fast_help, one_repository_per_help
from cvexp.paths import CONFIG_DIR, PACKAGE_DIR

# One entry point per primary config: conf/train.yaml is `python -m cvexp.train`, and so on.
ENTRY_POINTS = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
CONFIG_SUFFIXES = (".yaml", ".yml")


def lists_groups(job: str) -> bool:
    """Whether the job's help template shows the config groups (cvexp.predict's shows its config only)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            help_cfg = compose(job, return_hydra_config=True).hydra.help
    finally:
        GlobalHydra.instance().clear()
    return "$APP_CONFIG_GROUPS" in OmegaConf.to_container(help_cfg, resolve=False)["template"]


def groups_on_disk(root: Path) -> dict[str, set[str]]:
    """Every config group under a config folder (``model``, ``model/detr_family``, ...) and its options.

    Follows symbolic links (conf/experiment is one), as Hydra's file source does.
    """
    groups: dict[str, set[str]] = {}
    for folder, _, names in os.walk(root, followlinks=True):
        options = {Path(name).stem for name in names if name.endswith(CONFIG_SUFFIXES)}
        group = Path(folder).relative_to(root).as_posix()
        if options and group != ".":  # the folder's own files are primary configs, not a group
            groups.setdefault(group, set()).update(options)
    return groups


def groups_in_config_store() -> dict[str, set[str]]:
    """The groups and options that Hydra and its plugins (hydra/launcher=ray, hydra/sweeper=ray_tune, ...) store in code."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports every hydra_plugins module, which registers its configs
    groups: dict[str, set[str]] = {}

    def walk(node: dict[str, Any], group: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{group}/{name}" if group else name)
            elif group:
                groups.setdefault(group, set()).add(Path(name).stem)

    walk(ConfigStore.instance().repo, "")
    return groups


def merged(*sources: dict[str, set[str]]) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for source in sources:
        for group, options in source.items():
            groups.setdefault(group, set()).update(options)
    return groups


def is_hydra_group(group: str) -> bool:
    return group == "hydra" or group.startswith("hydra/")


def help_text(job: str, flag: str = "--help", fast: bool = True) -> str:
    env = {**os.environ, FAST_HELP_ENV: "1" if fast else "0"}
    result = subprocess.run([sys.executable, "-m", f"cvexp.{job}", flag], capture_output=True, text=True, timeout=120,
                            cwd=CONFIG_DIR.parent, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def listed_groups(text: str) -> dict[str, set[str]]:
    """The ``group: option, option`` lines of the help's ``== Configuration groups ==`` section."""
    assert "== Configuration groups ==" in text, text
    section = text.split("== Configuration groups ==", 1)[1].split("\n==", 1)[0]
    groups: dict[str, set[str]] = {}
    for line in section.splitlines():
        group, colon, options = line.partition(": ")
        if colon and group and " " not in group:
            groups[group] = {option.strip() for option in options.split(",")}
    return groups


def test_every_primary_config_has_its_entry_point() -> None:
    assert ENTRY_POINTS, f"no primary config in {CONFIG_DIR}"
    for job in ENTRY_POINTS:
        assert (PACKAGE_DIR / f"{job}.py").is_file(), f"conf/{job}.yaml has no cvexp/{job}.py"


@pytest.mark.parametrize("job", ENTRY_POINTS)
def test_help_lists_every_group_and_option_under_conf(job: str) -> None:
    if not lists_groups(job):
        assert job != "train", "cvexp.train --help must list the config groups (README.md, docs/workflow.md)"
        pytest.skip(f"cvexp.{job}'s help template has no $APP_CONFIG_GROUPS")
    expected = {group: options for group, options in groups_on_disk(CONFIG_DIR).items() if not is_hydra_group(group)}
    listed = listed_groups(help_text(job))
    assert expected, f"no config group under {CONFIG_DIR}"
    for group, options in expected.items():
        assert group in listed, f"cvexp.{job} --help does not list conf/{group}/"
        assert options <= listed[group], f"cvexp.{job} --help lists {group}: {sorted(listed[group])}, without {sorted(options - listed[group])}"
    assert not any(is_hydra_group(group) for group in listed), "Hydra's own groups belong to --hydra-help"


def test_hydra_help_lists_hydras_and_the_plugins_groups() -> None:
    # cvexp's conf/hydra/, Hydra's own package of configs, and the configs that Hydra and the plugins store in code.
    everywhere = merged(groups_on_disk(CONFIG_DIR), groups_on_disk(Path(str(files("hydra.conf")))), groups_in_config_store())
    expected = {group: options for group, options in everywhere.items() if is_hydra_group(group)}
    listed = listed_groups(help_text("train", "--hydra-help"))
    assert "hydra/launcher" in expected and "hydra/sweeper" in expected
    for group, options in expected.items():
        assert group in listed, f"--hydra-help does not list {group}"
        assert options <= listed[group], f"--hydra-help lists {group}: {sorted(listed[group])}, without {sorted(options - listed[group])}"


@pytest.mark.parametrize(("job", "flag"), [*((job, "--help") for job in ENTRY_POINTS), ("train", "--hydra-help")])
def test_fast_help_prints_hydras_own_text(job: str, flag: str) -> None:
    assert help_text(job, flag, fast=True) == help_text(job, flag, fast=False)


def test_a_config_added_to_a_group_is_listed_by_the_next_help(tmp_path: Path) -> None:
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "first.yaml").write_text("value: 1\n")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            with one_repository_per_help():
                assert loader.get_group_options("group") == ["first"]
            (tmp_path / "group" / "second.yaml").write_text("value: 2\n")
            with one_repository_per_help():
                assert sorted(loader.get_group_options("group")) == ["first", "second"]
    finally:
        GlobalHydra.instance().clear()


def test_runs_without_a_help_flag_go_straight_to_hydra(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ConfigLoaderImpl.get_group_options
    seen: list[object] = []

    @fast_help
    def main() -> None:
        seen.append(ConfigLoaderImpl.get_group_options)

    monkeypatch.setattr(sys, "argv", ["cvexp.train", "model=detr", "trainer.max_epochs=1"])
    main()
    monkeypatch.setattr(sys, "argv", ["cvexp.train", "--help"])
    main()
    assert seen[0] is original and seen[1] is not original
    assert ConfigLoaderImpl.get_group_options is original, "the help's repository outlived the help"
