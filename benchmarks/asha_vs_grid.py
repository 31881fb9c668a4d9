"""Wall time and best result of an ASHA sweep against the full grid over the same space.

Both run ``python -m cvexp.train -m sweeper=asha`` as a user would, on a fresh local Ray cluster,
with the same trials (a grid of learning rates), the same epochs and the same concurrency; the
grid runs every trial to the end (``hydra.sweeper.scheduler.type=fifo``), ASHA stops the weak ones
at its rungs. The metric is ``--metric`` (``val/loss`` by default, lower is better, which tells
trials apart even where a model's mAP is still 0 after a few short epochs; ``--metric val/map --mode
max`` for a model that learns fast enough). "Within 5 %" compares the two bests as a ratio.

    python benchmarks/asha_vs_grid.py [--epochs 6] [--train-batches 20] [--lrs 1e-3 3e-4 1e-5 1e-7]
        [--grace-period 1] [--reduction-factor 2] [--sweeper asha_ray_train] [overrides ...]

``--sweeper asha_ray_train`` makes every trial a Ray Train run (its preset: one trial at a time, two
DDP workers of one CPU each), for both sweeps. Writes the table into docs/benchmarks.md between the
asha-vs-grid (or asha-ray-train-vs-grid) markers.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import replace_section  # noqa: E402


def run_sweep(root: Path, data_dir: Path, scheduler: str, args: argparse.Namespace) -> tuple[float, dict[str, str], int]:
    """One sweep in a subprocess; returns (wall seconds, the best row of its ranking, trials stopped early)."""
    values = ", ".join(str(lr) for lr in args.lrs)
    command = [sys.executable, "-m", "cvexp.train", "-m", f"sweeper={args.sweeper}", f"paths.data_dir={data_dir}",
               f"trainer.max_epochs={args.epochs}", "trainer.check_val_every_n_epoch=1", f"+trainer.limit_train_batches={args.train_batches}",
               "+trainer.limit_val_batches=4", "trainer.num_sanity_val_steps=0", "scheduler.num_warmup_steps=5",
               "report=none", "test_after_fit=false", f"optimized_metric={args.metric}", f"callbacks.model_checkpoint.mode={args.mode}",
               f"hydra.callbacks.sweep_summary.mode={args.mode}", "hydra.sweeper.num_samples=1", f"hydra.sweeper.scheduler.grace_period={args.grace_period}",
               f"hydra.sweeper.scheduler.reduction_factor={args.reduction_factor}",
               f"hydra.sweeper.scheduler.type={scheduler}", f"hydra.sweeper.max_concurrent_trials={args.concurrency}",
               f"hydra.sweeper.init.num_cpus={args.concurrency * args.cpus_per_trial}", f"++hydra.sweeper.search_space={{optimizer.lr: {{type: grid, values: [{values}]}}}}",
               *args.overrides]  # fmt: skip
    env = {**os.environ, "CVEXP_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the {scheduler} sweep failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    (sweep_dir,) = (root / "outputs" / "multiruns" / "train").iterdir()
    with (sweep_dir / "sweep_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        print(f"  {scheduler}: {row['overrides']} {row['status']} {args.metric} {row[args.metric]}")
    return seconds, rows[0], sum(row["status"] == "STOPPED" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-batches", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-5, 1e-7])
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (one CPU each)")
    parser.add_argument("--metric", default="val/loss", help="what ASHA and the ranking optimise (val/map once the model learns fast enough)")
    parser.add_argument("--mode", default="min", choices=["min", "max"])
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA: 1/this of the trials go on at each rung")
    parser.add_argument("--sweeper", default="asha", choices=["asha", "asha_ray_train"],
                        help="asha_ray_train: each trial a Ray Train run of trainer.num_workers (2) one-CPU workers")
    parser.add_argument("overrides", nargs="*", help="further cvexp.train overrides, e.g. model=detr")
    args = parser.parse_args()
    if args.sweeper == "asha_ray_train":
        args.concurrency, args.cpus_per_trial = 1, 2  # the preset: one trial at a time, its two workers on the two CPUs
    else:
        args.cpus_per_trial = 1

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "datasets"
        results = {}
        # The grid first: it also generates the dataset, so neither timing includes that.
        for name, scheduler in (("grid", "fifo"), ("asha", "asha")):
            results[name] = run_sweep(Path(tmp) / name, data_dir, scheduler, args)
            print(f"{name}: {results[name][0]:.1f} s, best {results[name][1]['overrides']} {args.metric} {results[name][1][args.metric]}")

    (grid_s, grid_best, _), (asha_s, asha_best, stopped) = results["grid"], results["asha"]
    grid_value, asha_value = float(grid_best[args.metric]), float(asha_best[args.metric])
    body = "\n".join([
        f"{len(args.lrs)} trials (`optimizer.lr` in {', '.join(map(str, args.lrs))}), {args.epochs} epochs of "
        f"{args.train_batches} batches each, {args.concurrency} at once ({args.cpus_per_trial} CPU each"
        f"{', as a Ray Train run of 2 workers' if args.sweeper == 'asha_ray_train' else ''}), metric `{args.metric}` ({args.mode}). "
        f"Extra overrides: {' '.join(args.overrides) or 'none'}.",
        "",
        f"| sweep | wall time (s) | trials stopped early | best trial | best {args.metric} |",
        "|---|---|---|---|---|",
        f"| grid (every trial to the end, `scheduler.type=fifo`) | {grid_s:.1f} | 0 | `{grid_best['overrides']}` | {grid_value:.4f} |",
        f"| ASHA (`sweeper={args.sweeper}`, grace period {args.grace_period}, reduction factor {args.reduction_factor}) | {asha_s:.1f} | {stopped} | `{asha_best['overrides']}` | {asha_value:.4f} |",
        f"| **ASHA / grid** | **{asha_s / grid_s:.2f}** (goal ≤ 0.5) | | | **{asha_value / grid_value:.3f}** (goal within 5 %) |",
    ])  # fmt: skip
    section = "asha-vs-grid" if args.sweeper == "asha" else "asha-ray-train-vs-grid"
    replace_section(REPO / "docs" / "benchmarks.md", section, body)
    print(body)


if __name__ == "__main__":
    main()
