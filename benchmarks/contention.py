"""Training on a busy machine: the default training alone, beside a busy loop, and beside repeated pip downloads.

Each run trains the default config (``python -m cvexp.train`` as composed, MLflow off) in this
process and measures training images/s over ``--steps`` steps after 5 untimed ones (or fewer, where
``--budget`` seconds ran out first: 2 threads beside a busy loop made a step take 14 s here). The
other process starts before the run and is killed after it:

- ``busy loop``: ``python -c 'while 1: pass'`` (one core, all the time);
- ``pip download``: ``pip download --no-deps`` of the torch wheel (190 MB) into a temporary folder,
  again and again (interpreter start-up, hashing and copying: about one core, in bursts).

Two thread policies, alternating within each repeat: ``adaptive`` (the default,
:class:`cvexp.engines.cpu_threads.AdaptiveCpuThreads`) and ``fixed`` (``num_threads`` = the cores,
torch's own default and cvexp's before the adaptive policy). The slowdown of a policy beside a busy
process is its images/s alone divided by its images/s beside it; medians over the repeats.

    python benchmarks/contention.py [--repeats 3] [--steps 60] [--budget 60] [--no-write] [overrides ...]

Writes the table into docs/benchmarks.md between the training-contention markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks.report import publish, runs_cell  # noqa: E402
from benchmarks.training_throughput import compose_config  # noqa: E402
from cvexp.engines.cpu_threads import AdaptiveCpuThreads, usable_cores  # noqa: E402
from cvexp.training import run_training  # noqa: E402

CONDITIONS = ("alone", "busy loop", "pip download")
WARMUP_STEPS = 5


def start_busy_process(condition: str, scratch: Path) -> subprocess.Popen | None:
    """The other process of ``condition`` (None when alone), in a session of its own so that it can be killed whole."""
    if condition == "alone":
        return None
    if condition == "busy loop":
        command = [sys.executable, "-c", "while 1: pass"]
    else:
        pip = f"{sys.executable} -m pip download --no-deps --no-cache-dir --quiet -d {scratch} torch==2.13.0"
        command = ["bash", "-c", f"while true; do {pip} >/dev/null 2>&1; rm -rf {scratch}/*; done"]
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen | None) -> None:
    if process is not None:
        os.killpg(process.pid, 9)
        process.wait()


class StepBudget(L.Callback):
    """Times the training steps after ``warmup`` ones, and ends the run after ``steps`` timed steps or ``budget_s`` seconds."""

    def __init__(self, warmup: int, steps: int, budget_s: float) -> None:
        self.warmup, self.steps, self.budget_s = warmup, steps, budget_s
        self.seen, self.images, self.start = 0, 0, 0.0
        self.elapsed = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen += 1
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        elif self.seen > self.warmup:
            self.images += len(batch["targets"])
            self.elapsed = time.perf_counter() - self.start
            if self.seen - self.warmup >= self.steps or self.elapsed >= self.budget_s:
                trainer.should_stop = True

    @property
    def images_per_second(self) -> float:
        return self.images / self.elapsed if self.elapsed else 0.0


def run_once(root: Path, condition: str, policy: str, cores: int, steps: int, budget_s: float, overrides: list[str]) -> tuple[float, list]:
    """Images/s of one training run under ``condition`` with thread ``policy``, and the thread changes the policy made."""
    threads = None if policy == "adaptive" else cores
    # The policy's callback is passed in (instead of the configured one) to read its changes afterwards.
    cfg = compose_config(root, ["logger=none", "trainer.check_val_every_n_epoch=1000", "test_after_fit=false",
                                f"num_threads={threads or 'null'}", "callbacks.cpu_threads=null", *overrides])  # fmt: skip
    torch.set_num_threads(cores)  # every run starts from torch's default
    timer, policy_callback = StepBudget(WARMUP_STEPS, steps, budget_s), AdaptiveCpuThreads(num_threads=threads)
    other = start_busy_process(condition, root / "pip-download")
    try:
        time.sleep(1.0 if other else 0.0)  # the other process is under way before the first step
        run_training(cfg, extra_callbacks=[timer, policy_callback])
    finally:
        stop(other)
    return timer.images_per_second, policy_callback.changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help=f"timed training steps per run, after {WARMUP_STEPS} untimed ones")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds after which a run stops, however few steps it made")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS, help="what runs beside the training")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cores = usable_cores()
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pip-download").mkdir()
        for repeat in range(args.repeats):
            for condition in args.conditions:
                for policy in ("adaptive", "fixed") if repeat % 2 == 0 else ("fixed", "adaptive"):
                    ips, changes = run_once(root, condition, policy, cores, args.steps, args.budget, args.overrides)
                    results.setdefault((condition, policy), []).append(ips)
                    print(f"repeat {repeat + 1}: {condition:12s} {policy:8s} {ips:7.1f} images/s, thread changes (s, threads): "
                          f"{[(round(t), n) for t, n in changes]}", flush=True)  # fmt: skip
    lines = [f"The default training (`python -m cvexp.train`, MLflow off): {args.steps} timed steps per run after "
             f"{WARMUP_STEPS} untimed ones, or fewer where {args.budget:.0f} s ran out; "
             f"{args.repeats} repeats alternating the policies; {cores} usable cores. Slowdown: a policy's images/s alone over "
             "its images/s beside the other process (medians).", "",
             "| beside | threads | images/s (median) | runs | slowdown |", "|---|---|---:|---|---:|"]  # fmt: skip
    for condition in args.conditions:
        for policy in ("adaptive", "fixed"):
            runs = results[(condition, policy)]
            alone = statistics.median(results.get(("alone", policy), [float("nan")]))
            label = "adaptive (default)" if policy == "adaptive" else f"fixed at {cores}"
            lines.append(f"| {condition} | {label} | {statistics.median(runs):.1f} | {runs_cell(runs)} | "
                         f"{alone / statistics.median(runs):.2f}x |")  # fmt: skip
    publish("\n".join(lines), "training-contention", write=not args.no_write)


if __name__ == "__main__":
    main()
