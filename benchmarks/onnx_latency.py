"""Latency of an exported model: onnxruntime against PyTorch eager, on the same artifact and the same inputs.

Loads a model artifact that ``cvexp.export`` has exported (``<artifact>/model.onnx``) twice: as the
PyTorch model and as the onnxruntime session, both through :class:`~cvexp.inference.predictor.Predictor`
(the same batches, pixels and post-processing). Times ``run_model`` (the model and its
post-processing; the images already decoded, resized and normalised) at batch 1 and 8, alternating
the two sides call by call, with the same number of intra-op threads on both. Writes its table into
docs/benchmarks.md (section ``onnx-latency``).

    python benchmarks/onnx_latency.py --model outputs/runs/train/<time>/model [--calls 60] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.report import publish  # noqa: E402
from cvexp.evaluation.evaluator import model_split  # noqa: E402
from cvexp.inference.onnx import ONNX_FILE  # noqa: E402
from cvexp.inference.predictor import Predictor  # noqa: E402

WARMUP = 5


def model_inputs(predictor: Predictor, samples: list) -> tuple[dict[str, torch.Tensor], list]:
    """A batch of ``samples`` as the model's inputs (what ``predict_batches`` hands to ``run_model``) and its targets."""
    batch = predictor.collator(samples)
    return predictor.model_inputs(batch), batch["targets"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model artifact exported by cvexp.export")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per side and batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictors = {"PyTorch eager": Predictor.load(args.model, device="cpu"), "onnxruntime": Predictor.load(args.model / ONNX_FILE)}
    dataset, _ = model_split(predictors["PyTorch eager"], None, "val", str(args.model))
    rows, medians = [], {}
    for batch_size in (1, 8):
        batches = [model_inputs(predictors["PyTorch eager"], [dataset[(start + i) % len(dataset)] for i in range(batch_size)])
                   for start in range(0, 8 * batch_size, batch_size)]  # fmt: skip
        seconds: dict[str, list[float]] = {name: [] for name in predictors}
        with torch.inference_mode():
            for call in range(WARMUP + args.calls):
                for name, predictor in predictors.items():  # alternating, call by call
                    inputs, targets = batches[call % len(batches)]
                    started = time.perf_counter()
                    predictor.run_model(inputs, targets)
                    if call >= WARMUP:
                        seconds[name].append(time.perf_counter() - started)
        for name, values in seconds.items():
            per_image = np.array(values) * 1000 / batch_size
            medians[name, batch_size] = float(np.median(per_image))
            rows.append(f"| {name} | {batch_size} | {np.median(per_image):.2f} | {np.percentile(per_image, 95):.2f} | "
                        f"{np.median(values) * 1000:.1f} |")  # fmt: skip
        rows.append(f"| **speed-up** | {batch_size} | **{medians['PyTorch eager', batch_size] / medians['onnxruntime', batch_size]:.2f}×** | | |")
    metadata = predictors["PyTorch eager"].metadata
    body = (f"Model: `{args.model}` ({metadata.model_class}, {metadata.image_size}-pixel images), {args.calls} timed calls per side after "
            f"{WARMUP} warm-up ones, alternating; {args.threads} intra-op threads on both sides; the model and its post-processing "
            "(`Predictor.run_model`), inputs prepared beforehand.\n\n"
            "| runtime | images per call | p50 ms per image | p95 ms per image | p50 ms per call |\n|---|---:|---:|---:|---:|\n"
            + "\n".join(rows))  # fmt: skip
    publish(body, "onnx-latency", not args.no_write)


if __name__ == "__main__":
    main()
