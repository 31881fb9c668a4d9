"""The seven workflow notebooks (docs/notebooks/) run end to end on the embedded defaults, through the Python API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cvexp.paths import CONFIG_DIR

NOTEBOOKS = sorted((CONFIG_DIR.parent / "docs" / "notebooks").glob("*.ipynb"))


def test_there_are_seven_steps_and_each_uses_the_python_api() -> None:
    import nbformat

    assert [path.stem[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
    for path in NOTEBOOKS[1:]:  # the first only composes configs
        code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
        assert "cvexp.run(" in code, path.name


@pytest.mark.long
def test_the_notebooks_run_end_to_end_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executed in order in one folder, as a user would: 03 trains the model that 05-07 evaluate, register, export and monitor."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CVEXP_ROOT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"]
        assert not errors, (path.name, errors)
    assert os.listdir(tmp_path / "outputs" / "runs")
