"""Training throughput of ``cvexp.train`` against a minimal hand-written PyTorch loop.

Both train the same model on the same data with the same batch size, optimizer, scheduler and
gradient clipping, in one process, alternating (cvexp, loop, cvexp, loop, ...) so that machine
noise hits both alike. Throughput is training images per second over whole epochs (data loading
included), skipping each run's first epoch (warm-up). cvexp runs with its default callbacks and
MLflow logging, as a user gets it.

    python benchmarks/training_throughput.py [--repeats 3] [--epochs 4] [overrides ...]

Writes the table into docs/benchmarks.md between the training-throughput markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from benchmarks.report import publish, runs_cell  # noqa: E402
from cvexp.paths import CONFIG_DIR  # noqa: E402
from cvexp.training import build_training, run_training, seed_and_threads  # noqa: E402


class EpochTimer(L.Callback):
    """Wall time and images of each training epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._images += len(batch["targets"])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epochs.append((time.perf_counter() - self._start, self._images))


def compose_config(root: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/run-{time.time_ns()}", *overrides],
                      return_hydra_config=True)  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def images_per_second(epochs: list[tuple[float, int]]) -> float:
    measured = epochs[1:]  # the first epoch warms up allocators, workers and caches
    return sum(images for _, images in measured) / sum(seconds for seconds, _ in measured)


def run_cvexp(cfg) -> float:
    timer = EpochTimer()
    run_training(cfg, extra_callbacks=[timer])
    return images_per_second(timer.epochs)


def run_plain_loop(cfg) -> float:
    """The minimal loop a user would write by hand around the same model and data."""
    seed_and_threads(cfg)
    module, datamodule = build_training(cfg)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    model, adapter = module.model, module.adapter
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    total_steps = len(loader) * cfg.trainer.max_epochs
    scheduler = instantiate(cfg.scheduler)(optimizer, num_training_steps=total_steps)
    model.train()
    epochs = []
    for _ in range(cfg.trainer.max_epochs):
        start, images = time.perf_counter(), 0
        for batch in loader:
            batch["pixel_values"] = module.pixels.model_input(batch["pixel_values"], batch["pixel_mask"])
            loss = model(**adapter.model_inputs(batch)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            scheduler.step()
            images += len(batch["targets"])
        epochs.append((time.perf_counter() - start, images))
    return images_per_second(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [f"trainer.max_epochs={args.epochs}", "+trainer.limit_val_batches=0", "test_after_fit=false", *args.overrides]
    cvexp_rates, loop_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for repeat in range(args.repeats):
            cvexp_rates.append(run_cvexp(compose_config(root, overrides)))
            loop_rates.append(run_plain_loop(compose_config(root, overrides)))
            print(f"repeat {repeat + 1}: cvexp {cvexp_rates[-1]:.1f} img/s, plain loop {loop_rates[-1]:.1f} img/s", flush=True)
    cvexp_median, loop_median = statistics.median(cvexp_rates), statistics.median(loop_rates)
    ratio = cvexp_median / loop_median
    cfg = compose_config(Path(tempfile.gettempdir()), overrides)
    lines = [
        f"Model `{cfg.model.model_class.rsplit('.', 1)[-1]}` (default tiny config), data `shapes` "
        f"({cfg.data.image_size} px), batch size {cfg.data.batch_size}, {cfg.data.num_workers} DataLoader workers, "
        f"torch threads {torch.get_num_threads()}, {args.epochs} epochs per run (first skipped), {args.repeats} alternating repeats.",
        "",
        "| | images/s (median) | runs |",
        "|---|---|---|",
        f"| `cvexp.train` (callbacks, MLflow logging, progress bar) | {cvexp_median:.1f} | {runs_cell(cvexp_rates)} |",
        f"| hand-written PyTorch loop | {loop_median:.1f} | {runs_cell(loop_rates)} |",
        f"| **ratio** | **{ratio:.3f}** | goal ≥ 0.97 |",
    ]
    publish("\n".join(lines), "training-throughput", write=not args.no_write)


if __name__ == "__main__":
    main()
