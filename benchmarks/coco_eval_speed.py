"""COCO metric speed: cvexp's ``evaluate_coco`` (faster-coco-eval) against pycocotools' COCOeval.

Synthetic, seeded ground truth and detections (5 000 images x 100 detections by default); both
sides start from the same ground-truth dict and the same ``(N, 7)`` detection array, and time
indexing, matching, accumulation and the summary. The twelve summary numbers must be identical.
Writes its table into docs/benchmarks.md (section ``coco-eval-speed``).

    python benchmarks/coco_eval_speed.py [--images 5000] [--detections 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import BENCHMARKS_DOC, publish, runs_cell  # noqa: E402
from cvexp.data.labels import Category  # noqa: E402
from cvexp.evaluation.coco_metric import COCO_STAT_NAMES, evaluate_coco  # noqa: E402

IMAGE_SIZE = 640


def synthetic_data(num_images: int, detections_per_image: int, num_classes: int, seed: int) -> tuple[dict, np.ndarray]:
    """A ground-truth dict (1-15 boxes per image) and detections: jittered true boxes, some with the
    wrong class, the rest random boxes (false positives)."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": f"class{i + 1}"} for i in range(num_classes)]
    images, annotations, rows = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        count = int(rng.integers(1, 16))
        sizes = rng.uniform(8, 200, (count, 2))
        corners = rng.uniform(0, IMAGE_SIZE - sizes)
        boxes = np.concatenate([corners, sizes], axis=1)
        labels = rng.integers(1, num_classes + 1, count)
        for box, label in zip(boxes, labels, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box.tolist(), "category_id": int(label),
                                "iscrowd": 0, "area": float(box[2] * box[3])})  # fmt: skip
        matched = min(count, detections_per_image)
        jittered = boxes[:matched] + rng.normal(0, 4, (matched, 4))
        jittered[:, 2:] = np.maximum(jittered[:, 2:], 1)
        true_labels = np.where(rng.random(matched) < 0.1, rng.integers(1, num_classes + 1, matched), labels[:matched])
        extra = detections_per_image - matched
        random_sizes = rng.uniform(8, 200, (extra, 2))
        random_boxes = np.concatenate([rng.uniform(0, IMAGE_SIZE - random_sizes), random_sizes], axis=1)
        image_boxes = np.concatenate([jittered, random_boxes])
        image_labels = np.concatenate([true_labels, rng.integers(1, num_classes + 1, extra)])
        # Boxes near the truth tend to score higher, as a trained detector's do.
        scores = np.concatenate([rng.uniform(0.3, 1.0, matched), rng.uniform(0.0, 0.7, extra)])
        rows.append(np.column_stack([np.full(detections_per_image, image_id), image_boxes, scores, image_labels]))
    return {"images": images, "annotations": annotations, "categories": categories}, np.concatenate(rows)


def pycocotools_stats(ground_truth: dict, results: np.ndarray) -> np.ndarray:
    """pycocotools' COCOeval, as its documentation runs it."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    ground_truth, results = synthetic_data(args.images, args.detections, args.classes, args.seed)
    categories = [Category(c["id"], c["name"]) for c in ground_truth["categories"]]
    cvexp_times, reference_times = [], []
    for repeat in range(args.repeats):  # alternating, so that a busy spell hits both sides alike
        seconds, metrics = timed(evaluate_coco, ground_truth, results.copy(), categories)
        cvexp_times.append(seconds)
        seconds, stats = timed(pycocotools_stats, ground_truth, results.copy())
        reference_times.append(seconds)
        print(f"repeat {repeat + 1}: cvexp {cvexp_times[-1]:.2f} s, pycocotools {reference_times[-1]:.2f} s", flush=True)
    ours = np.array([metrics[name] for name in COCO_STAT_NAMES])
    difference = float(np.abs(ours - stats).max())
    if difference > 1e-12:
        raise SystemExit(f"the numbers differ (max |difference| {difference:.2e}): {dict(zip(COCO_STAT_NAMES, ours - stats, strict=True))}")

    cvexp_median, reference_median = statistics.median(cvexp_times), statistics.median(reference_times)
    body = (
        f"{args.images} images, {len(ground_truth['annotations'])} ground-truth boxes in {args.classes} classes, "
        f"{len(results)} detections ({args.detections} per image), seed {args.seed}; {args.repeats} alternating repeats. "
        f"The twelve COCO numbers are identical on both sides (max |difference| {difference:.1e}; mAP {ours[0]:.4f}, mAP50 {ours[1]:.4f}).\n\n"
        "| | seconds (median) | runs |\n|---|---|---|\n"
        f"| cvexp `evaluate_coco` (faster-coco-eval) | {cvexp_median:.2f} | {runs_cell(cvexp_times, 2)} |\n"
        f"| pycocotools `COCOeval` | {reference_median:.2f} | {runs_cell(reference_times, 2)} |\n"
        f"| **speed-up** | **{reference_median / cvexp_median:.1f}×** | goal ≥ 5× |"
    )
    publish(body, "coco-eval-speed", write=not args.no_write)
    if not args.no_write:
        print(f"written to {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
