"""A fast ``--help`` for the ``python -m cvexp.<job>`` entry points, with Hydra's own text.

Why it was slow: Hydra 1.3 renders ``--help`` (and ``--hydra-help``) by walking every config group,
its own ``hydra/...`` groups included (it fills ``$HYDRA_CONFIG_GROUPS`` even when the template
does not use it), and asks ``ConfigLoaderImpl.get_group_options`` for each group's options and
subgroups: 146 calls for ``cvexp.train``. Every call builds a new config repository, a deep copy of
the loader's (the ConfigStore's structured configs included), and processes the search path again:
about 8 ms a call, 1.1 of the 1.6 s that ``python -m cvexp.train --help`` took on 2 cores.

What :func:`fast_help` changes: while Hydra renders the help, the loader builds that repository once
per (primary config, overrides) and answers every group lookup from it. Hydra's own code still
walks the groups, searches every source on the search path (``conf/``, Hydra's own groups, the
plugins' ConfigStore entries such as ``hydra/launcher=ray`` and ``hydra/sweeper=ray_tune``) and
formats the text, so the output is the same as Hydra's. The repository lives for one help call in
one process, so a YAML file added to a group shows up the next time; nothing is cached on disk.
Normal runs are not touched: the patch is installed only when the command line asks for help.

``CVEXP_FAST_HELP=0`` switches it off, leaving Hydra's own path (``benchmarks/cli_help.py`` times both).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

# Hydra's flags that render a help text (hydra._internal.utils.get_args_parser). An abbreviation
# such as ``--hel``, which argparse accepts too, takes Hydra's own (slower, same) path.
HELP_FLAGS = frozenset({"--help", "-h", "--hydra-help"})
FAST_HELP_ENV = "CVEXP_FAST_HELP"

Main = TypeVar("Main", bound=Callable[..., Any])


def asks_for_help(argv: list[str]) -> bool:
    """Whether a command line (without the program name) asks Hydra for a help text."""
    return not HELP_FLAGS.isdisjoint(argv)


def fast_help(main: Main) -> Main:
    """Wraps a ``@hydra.main`` function: its ``--help`` lists the config groups from one repository.

    Put it above ``@hydra.main``. Without a help flag on the command line (or with
    ``CVEXP_FAST_HELP=0``) the call goes straight to Hydra.
    """

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get(FAST_HELP_ENV) == "0" or not asks_for_help(sys.argv[1:]):
            return main(*args, **kwargs)
        with one_repository_per_help():
            return main(*args, **kwargs)

    return run  # type: ignore[return-value]


@contextlib.contextmanager
def one_repository_per_help() -> Iterator[None]:
    """Within the block, Hydra's config loaders build the repository for group lookups once.

    ``ConfigLoaderImpl.get_group_options`` builds a repository (a deep copy of the loader's, with
    the search path of the primary config and overrides applied) and throws it away after one
    lookup; here the repository is kept per (loader, primary config, overrides) until the block
    ends, and the lookup itself is Hydra's. With a Hydra that lacks the private method this relies
    on, nothing changes.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    build_repository = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if build_repository is None:
        yield
        return
    original = ConfigLoaderImpl.get_group_options
    repositories: dict[tuple[Any, str | None, tuple[str, ...]], Any] = {}

    def get_group_options(
        self: Any,
        group_name: str,
        results_filter: ObjectType | None = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        # Keyed by the loader itself (not its id), so that it cannot be collected and its id reused.
        key = (self, config_name, tuple(overrides or ()))
        if key not in repositories:
            _, repositories[key] = build_repository(self, config_name, list(overrides or ()))
        return repositories[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigLoaderImpl.get_group_options = original  # type: ignore[method-assign]
