"""COCO json written from COCO records, the images beside it: what ``python -m cvexp.convert`` writes by default.

The reader of COCO data is :mod:`cvexp.data.coco`; this writes the layout it reads by default
(Roboflow's): ``<split>/_annotations.coco.json`` with the split's images under ``<split>/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

#: The annotation file of each split folder, as Roboflow names it (and ``data=coco`` reads by default).
ANNOTATION_FILE = "_annotations.coco.json"


def write_coco(splits: dict[str, tuple[dict[str, Any], Path]], out_dir: Path) -> Path:
    """Writes COCO splits (``name -> (content, images folder)``) as ``out_dir/<split>/``: the images and ``_annotations.coco.json``.

    Images are hard-linked where the file system allows, copied otherwise. Returns ``out_dir``.
    """
    for name, (content, images_dir) in splits.items():
        split_dir = out_dir / name
        for image in content["images"]:
            link_or_copy(images_dir / image["file_name"], split_dir / image["file_name"])
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / ANNOTATION_FILE).write_text(json.dumps(content, indent=1))
    return out_dir


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no second copy of the data), or a copy across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
