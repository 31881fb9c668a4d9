"""Serving latency: ``mlflow models serve`` over HTTP against the same pyfunc model in-process.

Wraps a model artifact (default: the newest ``outputs/runs/train/*/model``) in the pyfunc model
``cvexp.register`` logs (saved to a temporary folder, no registry), serves it on
127.0.0.1 with ``--env-manager local``, and times requests of 1 and of 8 base64 images of the
shapes test split: over HTTP (JSON encoding, the scoring server, the model) and in-process
(``PyFuncModel.predict`` on the same DataFrame). A bounded number of requests after a few warm-up
ones. The in-process side runs in a fresh process that only loads the pyfunc model and predicts, as
a user's script would (this process has run torch on its own thread, which would slow the model
thread down: cvexp/deployment/batching.py). Writes its table into docs/benchmarks.md (section
``serving-latency``, or ``serving-latency-onnx`` for an export).

    python benchmarks/serving_latency.py [--model PATH] [--requests 40] [--no-write]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.report import publish  # noqa: E402
from cvexp.deployment.pyfunc import IMAGE_COLUMN, encode_image_file, pyfunc_model_arguments  # noqa: E402
from cvexp.deployment.serving import mlflow_model_server  # noqa: E402
from cvexp.inference.predictor import Predictor  # noqa: E402

WARMUP = 3


def newest_artifact() -> Path:
    found = sorted((REPO / "outputs" / "runs" / "train").glob("*/model/cvexp.json"))
    if not found:
        raise SystemExit("no model artifact under outputs/runs/train/: run `python -m cvexp.train debug=smoke` or pass --model PATH.")
    return found[-1].parent


def percentiles(seconds: list[float], images: int) -> tuple[float, float, float]:
    """p50 and p95 of a request, and p50 per image, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 50)) / images


def timed(call, count: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def in_process_durations(model_dir: str, encoded: list[str], batches: tuple[int, ...], count: int) -> dict[int, list[float]]:
    """Request durations of ``PyFuncModel.predict`` per batch size; meant to run in a fresh process."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_dir)
    frames = {batch: pd.DataFrame({IMAGE_COLUMN: encoded[:batch]}) for batch in batches}
    return {batch: timed(lambda f=frame: model.predict(f), count) for batch, frame in frames.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a model artifact, <run dir>/model (default: the newest), or its export, <run dir>/model/model.onnx")
    parser.add_argument("--images", type=Path, default=REPO / "outputs" / "datasets" / "shapes" / "test", help="a folder of images")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per row (after 3 warm-up ones)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    import mlflow.pyfunc

    artifact = args.model or newest_artifact()
    paths = sorted(args.images.glob("*.png"))[:8]
    if len(paths) < 8:
        raise SystemExit(f"--images {args.images}: fewer than 8 PNG images (the shapes data is written by the first cvexp.train run).")
    predictor = Predictor.load(artifact, device="cpu")
    encoded = [encode_image_file(p) for p in paths]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "pyfunc"
        # An export is logged with the artifact folder it lies in, as cvexp.register logs it.
        artifact_dir = artifact.parent if artifact.suffix == ".onnx" else artifact
        mlflow.pyfunc.save_model(str(model_dir), **pyfunc_model_arguments(predictor, artifact_dir, paths[0], 0.5))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            in_process = pool.apply(in_process_durations, (str(model_dir), encoded, (1, 8), args.requests))
        with mlflow_model_server(str(model_dir)) as server, requests.Session() as session:
            url = server.url
            for batch in (1, 8):
                payload = {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[e] for e in encoded[:batch]]}}

                def over_http(payload: dict = payload) -> None:
                    response = session.post(f"{url}/invocations", json=payload, timeout=60)
                    response.raise_for_status()

                rows.append(("HTTP (mlflow models serve)", batch, *percentiles(timed(over_http, args.requests), batch)))
                rows.append(("in-process (PyFuncModel.predict)", batch, *percentiles(in_process[batch], batch)))

    lines = [f"Model: `{artifact.relative_to(REPO) if artifact.is_relative_to(REPO) else artifact}` ({predictor.metadata.model_class.split('.')[-1]}, "
             f"{predictor.image_size}-pixel images), {args.requests} timed requests per row after {WARMUP} warm-up ones; "
             "the server runs one uvicorn worker on the same machine.", "",
             "| path | images per request | p50 ms per request | p95 ms per request | p50 ms per image |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {name} | {batch} | {p50:.1f} | {p95:.1f} | {per_image:.1f} |" for name, batch, p50, p95, per_image in rows]
    # An export is served by onnxruntime (cvexp.register of model.onnx): a section of its own, beside the PyTorch one.
    publish("\n".join(lines), "serving-latency-onnx" if artifact.suffix == ".onnx" else "serving-latency", write=not args.no_write)


if __name__ == "__main__":
    main()
