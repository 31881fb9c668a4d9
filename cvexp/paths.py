"""Where cvexp's own files live."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# conf/ sits beside the package in the repository (an editable install keeps it there).
CONFIG_DIR = PACKAGE_DIR.parent / "conf"
