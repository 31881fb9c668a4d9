"""Writes benchmark results into docs/benchmarks.md, between named markers."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

BENCHMARKS_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine_line() -> str:
    return (f"Measured {datetime.date.today().isoformat()} on {platform.machine()} with {torch.get_num_threads()} torch threads, "
            f"Python {platform.python_version()}, torch {torch.__version__}.")  # fmt: skip


def replace_section(path: Path, name: str, body: str) -> None:
    """Replaces the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (appends if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{machine_line()}\n\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {name}\n\n{block}\n"
    path.write_text(text)


def publish(body: str, name: str, write: bool, path: Path = BENCHMARKS_DOC) -> None:
    """Prints a benchmark's ``body`` and, when ``write``, puts it into ``path`` as section ``name`` (:func:`replace_section`)."""
    print(body)
    if write:
        replace_section(path, name, body)


def runs_cell(values: list[float], digits: int = 1) -> str:
    """A table cell listing every run's value, in run order."""
    return ", ".join(f"{value:.{digits}f}" for value in values)
