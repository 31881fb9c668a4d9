"""The MLflow pyfunc model that ``mlflow models serve`` runs: base64 images in, COCO detections out.

MLflow's transformers flavour gives object-detection pipelines no pyfunc flavour, so the model is a
custom :class:`mlflow.pyfunc.PythonModel` around the Hugging Face export (an artifact directory,
see :mod:`cvexp.deployment.detector`).

Request (one row per image; ``params`` optional)::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]},
     "params": {"score_threshold": 0.3}}

Response: ``{"predictions": [[{"bbox": [x, y, w, h], "score": ..., "category_id": ..., "category_name": ...}, ...], ...]}``,
one list per image, in the request's order.
"""

from __future__ import annotations

import base64
import binascii
import io
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

IMAGE_COLUMN = "image"
EXPORT_ARTIFACT = "hf_model"
DEFAULT_SCORE_THRESHOLD = 0.5


def _bad_request(message: str) -> MlflowException:
    # The scoring server answers an MlflowException with its error code's HTTP status (400 here)
    # and a JSON body, and keeps serving.
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_images(model_input: pd.DataFrame | dict | list) -> list[np.ndarray]:
    """The base64-encoded images of a request as HWC uint8 RGB arrays; a bad payload raises a 400 error.

    Accepts a DataFrame with an ``image`` column (what the scoring server builds from
    ``dataframe_split`` or ``inputs``), a ``{"image": [...]}`` dict, or a list of base64 strings.
    """
    from PIL import UnidentifiedImageError

    from cvexp.data.coco import load_rgb_image

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise _bad_request(f"the request has no '{IMAGE_COLUMN}' column (columns: {list(model_input.columns)}); "
                               f'send {{"dataframe_split": {{"columns": ["{IMAGE_COLUMN}"], "data": [["<base64>"]]}}}}.')  # fmt: skip
        encoded = model_input[IMAGE_COLUMN].tolist()
    elif isinstance(model_input, dict):
        encoded = list(model_input.get(IMAGE_COLUMN) or [])
    else:
        encoded = list(model_input)
    if not encoded:
        raise _bad_request(f"the request holds no images; send one base64-encoded image per row of the '{IMAGE_COLUMN}' column.")
    images = []
    for index, value in enumerate(encoded):
        if not isinstance(value, str | bytes):
            raise _bad_request(f"{IMAGE_COLUMN}[{index}] is a {type(value).__name__}, not a base64 string.")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise _bad_request(f"{IMAGE_COLUMN}[{index}] is not valid base64 ({error}).") from error
        try:
            # The loader training and evaluation use: upright by EXIF, transparency on white.
            images.append(load_rgb_image(io.BytesIO(data)))
        except (UnidentifiedImageError, OSError) as error:
            raise _bad_request(f"{IMAGE_COLUMN}[{index}] decodes to {len(data)} bytes that are not an image Pillow can read ({error}).") from error
    return images


def encode_image_file(path: str | Path) -> str:
    """A file's bytes as the base64 string a request carries."""
    with open(path, "rb") as file:
        return base64.b64encode(file.read()).decode("ascii")


class CvexpDetectorModel(mlflow.pyfunc.PythonModel):
    """A cvexp detector behind MLflow's pyfunc interface.

    Args:
        score_threshold: detections scoring below it are dropped, unless a request's
            ``params={"score_threshold": ...}`` says otherwise.
    """

    def __init__(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> None:
        self.score_threshold = score_threshold
        self.detector: Any = None

    def load_context(self, context: Any) -> None:
        """Loads the Hugging Face export from the model's ``hf_model`` artifact directory."""
        from cvexp.deployment.detector import load_exported_detector

        self.detector = load_exported_detector(context.artifacts[EXPORT_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Per image, its detections scoring at least ``params["score_threshold"]`` (see the module doc)."""
        from cvexp.deployment.detector import detect_images, detection_records

        threshold = float((params or {}).get("score_threshold", self.score_threshold))
        images = decode_images(model_input)
        names = {category.id: category.name for category in self.detector.label_map.categories}
        return [detection_records(detections, names, threshold) for detections in detect_images(self.detector, images)]


def pyfunc_model_arguments(detector: Any, export_dir: Path, example_image: Path, score_threshold: float) -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for ``detector`` exported to ``export_dir``.

    The signature (input column, output records, the ``score_threshold`` param) is inferred from a
    prediction on ``example_image``, which is also the input example.
    """
    from mlflow.models import infer_signature

    from cvexp.deployment.detector import detect_images, detection_records

    example = pd.DataFrame({IMAGE_COLUMN: [encode_image_file(example_image)]})
    names = {category.id: category.name for category in detector.label_map.categories}
    # Threshold 0 for the example output only: it shows the record fields even for a weak model.
    example_output = [detection_records(d, names, 0.0) for d in detect_images(detector, decode_images(example))]
    return {
        "python_model": CvexpDetectorModel(score_threshold),
        "artifacts": {EXPORT_ARTIFACT: str(export_dir)},
        "signature": infer_signature(example, example_output, params={"score_threshold": score_threshold}),
        "input_example": example,
        # Pinned to this environment; cvexp itself must be installed where the model is served.
        "pip_requirements": [f"{package}=={version(package)}" for package in ("mlflow", "torch", "transformers", "pillow", "pandas")],
    }
