"""Reading images as every reader and the served model need them: HWC uint8 RGB, upright."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class UnreadableImage:
    """A sample whose image could not be read at training time (``on_invalid=skip``): left out of its batch and counted."""

    image_id: int
    path: str
    reason: str


def load_rgb_image(path: Path | BinaryIO) -> np.ndarray:
    """Loads any image (a file path, or an open binary file) as HWC uint8 RGB, upright as its EXIF orientation says."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on white: dropping alpha would expose whatever colour transparent pixels hold.
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        return np.asarray(image.convert("RGB"))
