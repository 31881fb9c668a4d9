"""Throughput of ``cvexp.predict``: ``engine=local`` against ``engine=ray`` with 1 and 2 actors, on the same images.

Builds a folder of ``--images`` images (the RBC cells images, linked under new names until there are
enough), then runs each engine's :meth:`predict` over it, alternating the engines repeat by repeat, and
times the whole run (for Ray: starting a fresh local cluster and the actors, loading the model in
each) and the steady part (from the first image's results to the last). Each side gets the machine's
two cores: the local engine two torch threads, one actor two CPUs, two actors one each. Writes its
table into docs/benchmarks.md (section ``batch-prediction``).

    python benchmarks/batch_prediction.py --model outputs/runs/train/<time>/model [--images 1000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.report import publish, runs_cell  # noqa: E402
from cvexp.engines.ray_cluster import RayCluster  # noqa: E402
from cvexp.inference.engines.local import LocalPredictionEngine  # noqa: E402
from cvexp.inference.engines.ray import RayPredictionEngine  # noqa: E402
from cvexp.inference.inputs import ImageFilesDataset, resolve_inputs  # noqa: E402
from cvexp.inference.prediction import PredictionJob  # noqa: E402

RBC_CELLS = REPO.parent / "shared" / "datasets" / "rbc-cells"


def image_folder(count: int, folder: Path) -> Path:
    """``count`` images in ``folder``: the RBC cells images, linked as often as needed under new names."""
    sources = sorted(RBC_CELLS.glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no RBC cells images under {RBC_CELLS}")
    for index in range(count):
        (folder / f"{index:05d}.jpg").symlink_to(sources[index % len(sources)])
    return folder


def engines() -> dict[str, tuple[object, int | None]]:
    """Each side: its engine, and the torch threads of its job (a Ray actor gets its CPUs as threads)."""
    cluster = {"init": {"num_cpus": 2, "include_dashboard": False}}
    return {
        "local (2 threads)": (LocalPredictionEngine(num_workers=0), 2),
        "ray, 1 actor x 2 CPUs": (RayPredictionEngine(RayCluster(**cluster), num_actors=1, cpus_per_actor=2), None),
        "ray, 2 actors x 1 CPU": (RayPredictionEngine(RayCluster(**cluster), num_actors=2, cpus_per_actor=1), None),
    }


def run(engine, job: PredictionJob, inputs) -> tuple[float, float, int]:
    """(whole seconds, steady images/s, images) of one prediction run."""
    started = time.perf_counter()
    first = None
    count = 0
    for _ in engine.predict(job, inputs):
        count += 1
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    return ended - started, (count - 1) / (ended - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model artifact (<run dir>/model)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        inputs = ImageFilesDataset(resolve_inputs(str(image_folder(args.images, Path(folder)))))
        sides = engines()
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name, (engine, threads) in sides.items():
                job = PredictionJob(ckpt_path=args.model, device="cpu", batch_size=args.batch_size, num_threads=threads)
                whole, steady, count = run(engine, job, inputs)
                assert count == args.images, f"{name}: {count} results for {args.images} images"
                figures[name].append((whole, steady))
                print(f"repeat {repeat + 1}: {name}: {whole:.1f} s in all, {steady:.2f} images/s steady", flush=True)

    local_steady = statistics.median(steady for _, steady in figures["local (2 threads)"])
    metadata = json.loads((Path(args.model) / "cvexp.json").read_text())
    lines = [
        f"{args.images} images (RBC cells, 640x480 JPEG), batch {args.batch_size}, {metadata['model_class'].split('.')[-1]} "
        f"at {metadata['image_size']} px; medians of {args.repeats} repeats, engines alternating; 2 CPU cores.",
        "",
        "| engine | whole run (s) | runs | images/s, whole run | images/s, steady | runs | steady vs local |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in figures.items():
        wholes, steadies = [whole for whole, _ in runs], [steady for _, steady in runs]
        whole, steady = statistics.median(wholes), statistics.median(steadies)
        lines.append(f"| {name} | {whole:.1f} | {runs_cell(wholes)} | {args.images / whole:.2f} | {steady:.2f} | "
                     f"{runs_cell(steadies, 2)} | {steady / local_steady:.2f}× |")  # fmt: skip
    publish("\n".join(lines), "batch-prediction", not args.no_write)


if __name__ == "__main__":
    main()
