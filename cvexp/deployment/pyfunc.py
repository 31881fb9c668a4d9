"""The MLflow pyfunc model that ``mlflow models serve`` runs: base64 images in, the task's records out.

MLflow's transformers flavour gives object-detection and segmentation pipelines no pyfunc flavour (and
would serve a classifier without cvexp's categories), so the model is a
custom :class:`mlflow.pyfunc.PythonModel` around the model artifact (the ``<run dir>/model``
directory of the training run, :mod:`cvexp.artifact`), which it runs through the one inference path
(:class:`cvexp.inference.predictor.Predictor`).

Request (one row per image; ``params`` optional)::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]},
     "params": {"score_threshold": 0.3}}

Response: ``{"predictions": [[record, ...], ...]}``, one list of flat records per image, in the request's
order; the model's task decides the records (:meth:`cvexp.tasks.Task.response`, docs/deployment.md):
detection ``{"bbox": [x, y, w, h], "score", "category_id", "category_name"}``; classification one
record per class scoring at least the threshold, best first; semantic segmentation one record per
class present with the RLE of its pixels; instance segmentation a detection record with its mask's RLE.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
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
# Serving limits (conf/register.yaml, serving.*): an image's pixels, and a request's bytes.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# The most images in one forward pass of the server's model thread (cvexp.deployment.batching).
DEFAULT_MAX_BATCH_SIZE = 8


def _bad_request(message: str) -> MlflowException:
    # The scoring server answers an MlflowException with its error code's HTTP status (400 here)
    # and a JSON body, and keeps serving.
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


# MLflow's scoring server (3.x) puts the request's data into its error messages ("Failed to predict
# data '<the DataFrame>'", "of data '<...>' with schema", "Input: <the body>") and a server-side
# stack trace into the JSON; an error answer must not send a client's payload (images, someone's data)
# back or out to logs. These are cut out of every error it answers.
_ECHOES = (
    (re.compile(r"^Failed to predict data '.*?'\. \nError: ", re.DOTALL), ""),
    (re.compile(r" of data '.*?' with schema", re.DOTALL), " with schema"),
    (re.compile(r"\s*Input: \n.*\Z", re.DOTALL), ""),
)


def scrub_error(error: MlflowException) -> MlflowException:
    """``error`` without the request data or stack trace that MLflow's scoring server put into it."""
    message = error.message
    for pattern, replacement in _ECHOES:
        message = pattern.sub(replacement, message)
    error.message = message
    error.json_kwargs.pop("stack_trace", None)
    return error


def guard_scoring_server(max_request_bytes: int | None) -> None:
    """In the server process (from ``load_context``): refuse bodies above ``max_request_bytes`` (413) and
    scrub the payload out of every error answer (:func:`scrub_error`).

    It wraps ``mlflow.pyfunc.scoring_server.invocations``, which the server's ``/invocations`` route
    calls by name for each request; in any other process it changes nothing that is used.
    """
    from mlflow.pyfunc import scoring_server

    original = scoring_server.invocations
    if getattr(original, "cvexp_guarded", False):
        return

    def invocations(data: bytes | str, content_type: str, model: Any, input_schema: Any) -> Any:
        if max_request_bytes and len(data) > max_request_bytes:
            body = {"error_code": "REQUEST_TOO_LARGE", "message": f"the request body has {len(data):,} bytes, above the served model's "
                    f"max_request_bytes={max_request_bytes:,}; send fewer or smaller images per request."}  # fmt: skip
            return scoring_server.InvocationsResponse(response=json.dumps(body), status=413, mimetype="application/json")
        try:
            return original(data, content_type, model, input_schema)
        except MlflowException as error:
            raise scrub_error(error) from None

    invocations.cvexp_guarded = True  # type: ignore[attr-defined]
    scoring_server.invocations = invocations


def decode_images(model_input: pd.DataFrame | dict | list, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[np.ndarray]:
    """The base64-encoded images of a request as HWC uint8 RGB arrays; a bad payload raises a 400 error.

    Accepts a DataFrame with an ``image`` column (what the scoring server builds from
    ``dataframe_split`` or ``inputs``), a ``{"image": [...]}`` dict, or a list of base64 strings. An
    image whose header claims more than ``max_image_pixels`` pixels is refused before it is decoded.
    Messages name the row and the problem, never the payload.
    """
    from PIL import Image

    from cvexp.data.images import load_rgb_image
    from cvexp.data.validation import pixel_limit_problem, read_image_header

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
            header = read_image_header(io.BytesIO(data))
        except ValueError as error:
            raise _bad_request(f"{IMAGE_COLUMN}[{index}]: {len(data)} bytes that are not an image ({str(error).split(' (')[0]}).") from error
        too_large = pixel_limit_problem(header, max_image_pixels, setting="the served model's max_image_pixels")
        if too_large:
            raise _bad_request(f"{IMAGE_COLUMN}[{index}]: {too_large}.")
        try:
            if max_image_pixels:  # checked above: Pillow's own bomb guard must not refuse what the limit allows
                Image.MAX_IMAGE_PIXELS = max(max_image_pixels, Image.MAX_IMAGE_PIXELS or 0)
            # The loader training and evaluation use: upright by EXIF, transparency on white.
            images.append(load_rgb_image(io.BytesIO(data)))
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # a header that promised more than the data holds
            raise _bad_request(f"{IMAGE_COLUMN}[{index}]: the image cannot be decoded ({type(error).__name__}).") from error
    return images


def encode_image_file(path: str | Path) -> str:
    """A file's bytes as the base64 string a request carries."""
    with open(path, "rb") as file:
        return base64.b64encode(file.read()).decode("ascii")


class CvexpModel(mlflow.pyfunc.PythonModel):
    """A cvexp model of any task behind MLflow's pyfunc interface; its task shapes the answer (:meth:`cvexp.tasks.Task.response`).

    Args:
        score_threshold: predictions scoring below it are dropped (detections, instances, classes),
            unless a request's ``params={"score_threshold": ...}`` says otherwise.
        max_image_pixels: an image whose header claims more pixels is refused (400) before it is decoded.
        max_request_bytes: a request body above it is refused (413).
        max_batch_size: the most images, from one request or several concurrent ones, in one forward
            pass (:class:`~cvexp.deployment.batching.RequestBatcher`).
        model_file: the file of the model artifact to run, when not its PyTorch weights (``model.onnx``,
            written by ``cvexp.export``: served by onnxruntime).
    """

    def __init__(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 model_file: str | None = None) -> None:  # fmt: skip
        self.model_file = model_file
        self.score_threshold = score_threshold
        self.max_image_pixels = max_image_pixels
        self.max_request_bytes = max_request_bytes
        self.max_batch_size = max_batch_size
        self.predictor: Any = None
        self.batcher: Any = None

    def load_context(self, context: Any) -> None:
        """Loads the model artifact (the MLflow model's ``model`` artifact directory) on the CPU, on the thread that
        will run it (:class:`~cvexp.deployment.batching.RequestBatcher`), and guards the server."""
        from cvexp.deployment.batching import RequestBatcher

        def load() -> Any:  # on the model thread, where every forward pass runs too
            model_file = getattr(self, "model_file", None)  # None in models logged before exports
            self.predictor = load_served_model(Path(context.artifacts[MODEL_ARTIFACT]), model_file)
            return lambda images: self.predictor.predict_images(images, batch_size=len(images))

        # Models logged before request batching have no max_batch_size: they get the default.
        self.batcher = RequestBatcher(load, getattr(self, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        guard_scoring_server(getattr(self, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Per image, its prediction's records scoring at least ``params["score_threshold"]`` (see the module doc)."""
        threshold = (params or {}).get("score_threshold", self.score_threshold)
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
            raise _bad_request(f"params.score_threshold={threshold!r}: give a number from 0 to 1.")
        images = decode_images(model_input, getattr(self, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        request = {"score_threshold": float(threshold)}
        return [self.predictor.response(prediction, request) for prediction in self.batcher.predict(images)]


def load_served_model(artifact: Path, model_file: str | None = None) -> Any:
    """What the served model runs: the artifact's PyTorch model (:class:`~cvexp.inference.predictor.Predictor`, on the
    CPU), or its export ``model_file`` run without torch (:class:`~cvexp.deployment.exported_model.ExportedModel`).
    Both have ``predict_images``, ``response``, ``serving_requirements`` and ``ships_cvexp_code``."""
    if model_file and Path(model_file).suffix == ".onnx":
        from cvexp.deployment.exported_model import ExportedModel

        return ExportedModel.load(artifact / model_file)
    from cvexp.inference.predictor import Predictor

    return Predictor.load(artifact, device="cpu")


def pyfunc_model_arguments(predictor: Any, artifact_dir: Path, example_image: Path, score_threshold: float,
                           max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
                           max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> dict[str, Any]:  # fmt: skip
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for ``predictor``, whose model artifact is ``artifact_dir``.

    The signature (input column, output records, the ``score_threshold`` param) is inferred from a
    prediction on ``example_image``, which is also the input example.
    """
    from mlflow.models import infer_signature

    import cvexp

    # The example output is the served model's own answer: the export's, when an export is served.
    served = load_served_model(artifact_dir, predictor.model_file) if predictor.model_file else predictor
    example = pd.DataFrame({IMAGE_COLUMN: [encode_image_file(example_image)]})
    # Threshold 0 for the example output only: it shows the record fields even for a weak model.
    example_output = [served.response(p, {"score_threshold": 0.0}) for p in served.predict_images(decode_images(example))]
    return {
        "python_model": CvexpModel(score_threshold, max_image_pixels, max_request_bytes, max_batch_size, predictor.model_file),
        "artifacts": {MODEL_ARTIFACT: str(artifact_dir)},
        "signature": infer_signature(example, example_output, params={"score_threshold": score_threshold}),
        "input_example": example,
        # Pinned to this environment. The PyTorch model needs cvexp installed where it is served; an export ships
        # cvexp's code inside the MLflow model instead, as installing cvexp would install torch.
        "pip_requirements": [f"{package}=={version(package)}" for package in served.serving_requirements],
        "code_paths": [str(Path(cvexp.__file__).parent)] if served.ships_cvexp_code else None,
    }
