"""The MLflow pyfunc model that ``mlflow models serve`` runs: base64 images in, COCO detections out.

MLflow's transformers flavour gives object-detection pipelines no pyfunc flavour, so the model is a
custom :class:`mlflow.pyfunc.PythonModel` around the model artifact (the ``<run dir>/model``
directory of the training run, :mod:`cvexp.artifact`), which it runs through the one inference path
(:class:`cvexp.inference.predictor.Predictor`).

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
# The key of the model artifact among the MLflow model's artifacts (``artifacts/model/`` inside it).
MODEL_ARTIFACT = "model"
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


def detection_records(detections: Any, category_names: dict[int, str], score_threshold: float) -> list[dict[str, Any]]:
    """One image's detections scoring at least ``score_threshold``, best first, as JSON-ready records.

    Each record: ``bbox`` (absolute ``[x, y, w, h]`` in the original image's pixels), ``score``,
    ``category_id`` (the dataset's own id) and ``category_name``.
    """
    import torch

    keep = detections.scores >= score_threshold
    order = torch.argsort(detections.scores[keep], descending=True)
    boxes, scores, ids = detections.boxes[keep][order], detections.scores[keep][order], detections.category_ids[keep][order]
    return [
        {"bbox": [float(v) for v in box], "score": float(score), "category_id": int(category), "category_name": category_names[int(category)]}
        for box, score, category in zip(boxes.tolist(), scores.tolist(), ids.tolist(), strict=True)
    ]


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
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        """Loads the model artifact (the MLflow model's ``model`` artifact directory) on the CPU."""
        from cvexp.inference.predictor import Predictor

        self.predictor = Predictor.load(context.artifacts[MODEL_ARTIFACT], device="cpu")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Per image, its detections scoring at least ``params["score_threshold"]`` (see the module doc)."""
        threshold = float((params or {}).get("score_threshold", self.score_threshold))
        images = decode_images(model_input)
        names = {category.id: category.name for category in self.predictor.label_map.categories}
        return [detection_records(detections, names, threshold) for detections in self.predictor.predict_images(images)]


def pyfunc_model_arguments(predictor: Any, artifact_dir: Path, example_image: Path, score_threshold: float) -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for ``predictor``, whose model artifact is ``artifact_dir``.

    The signature (input column, output records, the ``score_threshold`` param) is inferred from a
    prediction on ``example_image``, which is also the input example.
    """
    from mlflow.models import infer_signature

    example = pd.DataFrame({IMAGE_COLUMN: [encode_image_file(example_image)]})
    names = {category.id: category.name for category in predictor.label_map.categories}
    # Threshold 0 for the example output only: it shows the record fields even for a weak model.
    example_output = [detection_records(d, names, 0.0) for d in predictor.predict_images(decode_images(example))]
    return {
        "python_model": CvexpDetectorModel(score_threshold),
        "artifacts": {MODEL_ARTIFACT: str(artifact_dir)},
        "signature": infer_signature(example, example_output, params={"score_threshold": score_threshold}),
        "input_example": example,
        # Pinned to this environment; cvexp itself must be installed where the model is served.
        "pip_requirements": [f"{package}=={version(package)}" for package in ("mlflow", "torch", "transformers", "pillow", "pandas")],
    }
