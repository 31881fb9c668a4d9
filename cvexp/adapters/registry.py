"""Adapter registry: names -> OutputAdapter classes, extensible by other installed packages.

A package adds adapters through the ``cvexp.adapters`` entry point group::

    # its pyproject.toml
    [project.entry-points."cvexp.adapters"]
    my_family = "my_package.adapters:MyFamilyAdapter"

after which ``adapter.name=my_family`` selects it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from cvexp.adapters.base import OutputAdapter
from cvexp.data.labels import LabelMap

ENTRY_POINT_GROUP = "cvexp.adapters"
_REGISTRY: dict[str, type[OutputAdapter]] = {}


def register_adapter(name: str, adapter_class: type[OutputAdapter]) -> None:
    """Registers ``adapter_class`` under ``name``; a second class under a taken name is an error."""
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not adapter_class:
        raise ValueError(f"adapter name '{name}' is taken by {existing.__module__}.{existing.__qualname__}; pick another name.")
    _REGISTRY[name] = adapter_class


def available_adapters() -> dict[str, type[OutputAdapter]]:
    """Every registered adapter, built-in and from installed packages' entry points."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in _REGISTRY:
            register_adapter(entry_point.name, entry_point.load())
    return dict(_REGISTRY)


def create_adapter(name: str, label_map: LabelMap, **options: Any) -> OutputAdapter:
    """Builds the adapter registered as ``name`` (the ``_target_`` of conf/adapter/*.yaml)."""
    adapters = available_adapters()
    if name not in adapters:
        raise KeyError(f"adapter.name='{name}' is not registered; known adapters: {sorted(adapters)}. "
                       f"Register a new one under the '{ENTRY_POINT_GROUP}' entry point group.")
    return adapters[name](label_map, **options)
