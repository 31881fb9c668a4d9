"""Where a CPU training step's time goes, and what each speed switch of the training config buys.

The setting of ``benchmarks/vs_hf_trainer.py``: the tiny Conditional DETR saved by
``../shared/peer-hf/prepare.py`` (loaded with ``model.pretrained=``), RBC cells train (210 images),
416 px, batch 8. Two tables:

- **Parts**, in this process, the configurations alternating image by image and step by step:
  the data work per image in one thread, as a DataLoader worker does it (``__getitem__``: the
  cached decoded image, augmented; then the collator: pixels and labels), and the compute of one
  training step on a fixed batch with 2 threads (forward, loss, backward, clipping, AdamW).
- **Runs**: whole ``cvexp.train`` runs (2 DataLoader workers, no evaluation), one configuration
  after the other, ``--repeats`` rounds; images/s over the training epochs as in vs_hf_trainer.py.

Configurations: *before* (``pixels=processor pixels.channels_last=false``, every tensor of a batch sent
from a worker as a shared-memory segment of its own: what cvexp did until 2026-12-03), each change
alone, the defaults, and the defaults with ``optimizer.fused=true``. The handover column is the
training process's wait for a batch that a worker has ready (2 workers, batches fetched 150 ms apart).

    python benchmarks/training_profile.py [--repeats 3] [--epochs 3] [--no-write]

Writes the tables into docs/benchmarks.md between the training-profile markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.report import publish, runs_cell  # noqa: E402
from benchmarks.training_throughput import compose_config  # noqa: E402
from benchmarks.vs_hf_trainer import BATCH, IMAGE_SIZE, PEER_WORK, RBC_CELLS, run_cvexp  # noqa: E402
from cvexp.data import collate  # noqa: E402
from cvexp.training import build_training  # noqa: E402

BEFORE = ["pixels=processor", "pixels.channels_last=false"]
#: name -> (overrides, the largest tensor that travels inside a pickled batch: 0 sends every one as a shared-memory segment, as before)
CONFIGURATIONS: dict[str, tuple[list[str], int]] = {
    "before: `pixels=processor pixels.channels_last=false`, every tensor in shared memory": (BEFORE, 0),
    "small tensors inline alone": (BEFORE, collate.INLINE_TENSOR_BYTES),
    "`pixels=torch` alone": (["pixels.channels_last=false"], 0),
    "`pixels.channels_last=true` alone": (["pixels=processor"], 0),
    "**the defaults** (all three)": ([], collate.INLINE_TENSOR_BYTES),
    "the defaults + `optimizer.fused=true`": (["optimizer.fused=true"], collate.INLINE_TENSOR_BYTES),
}
MODEL = [f"data.root={RBC_CELLS}", "data=rbc_cells", "model=conditional_detr", f"model.pretrained={PEER_WORK / 'models' / 'tiny-cond-detr'}",
         f"data.image_size={IMAGE_SIZE}", f"data.batch_size={BATCH}", "data.num_workers=0", "logger=none"]  # fmt: skip


class Parts:
    """One configuration's data path and training step, ready to be timed."""

    def __init__(self, root: Path, overrides: list[str], inline_bytes: int) -> None:
        self.inline_bytes = inline_bytes
        cfg = compose_config(root, [*MODEL, *overrides])
        module, datamodule = build_training(cfg)
        datamodule.setup()
        self.dataset = datamodule.datasets["train"]
        self.collate = datamodule.collate_fn
        for index in range(len(self.dataset)):  # data.cache_images: every epoch after the first reads decoded images
            self.dataset[index]
        self.model, self.adapter = module.model.train(), module.adapter
        self.optimizer = instantiate(cfg.optimizer)(module.parameter_groups())
        self.clip = float(cfg.trainer.gradient_clip_val)
        self.pixels = module.pixels
        self.batch = self.collate([self.dataset[index] for index in range(BATCH)])

    def load(self, index: int) -> tuple[float, float]:
        """Seconds of ``__getitem__`` for a batch's images from ``index`` on, and of collating them."""
        start = time.perf_counter()
        samples = [self.dataset[(index + offset) % len(self.dataset)] for offset in range(BATCH)]
        loaded = time.perf_counter()
        self.collate(samples)
        return loaded - start, time.perf_counter() - loaded

    def handover(self, batches: int) -> list[float]:
        """Seconds the training process waits for each of ``batches`` batches that 2 workers have ready."""
        collate.INLINE_TENSOR_BYTES = self.inline_bytes  # the workers fork from here: they see it
        loader = DataLoader(self.dataset, batch_size=BATCH, num_workers=2, collate_fn=self.collate)
        waits, batch = [], None
        iterator = iter(loader)
        for _ in range(batches):
            time.sleep(0.15)  # a training step's time: the next batch is ready
            start = time.perf_counter()
            batch = next(iterator)  # noqa: F841 (the previous batch is freed here, as in training)
            waits.append(time.perf_counter() - start)
        del iterator
        return waits

    def step(self) -> float:
        """Seconds of one training step on the fixed batch, from its pixels as they leave a DataLoader worker."""
        start = time.perf_counter()
        batch = {**self.batch, "pixel_values": self.pixels.model_input(self.batch["pixel_values"], self.batch["pixel_mask"])}
        outputs = self.model(**self.adapter.model_inputs(batch, with_labels=True))
        self.adapter.adapt_output(outputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def alternate(parts: dict[str, Parts], rounds: int, measure: Callable[[Parts, int], Any]) -> dict[str, list[Any]]:
    """``measure(parts, round)`` for every configuration in turn, ``rounds`` times."""
    results: dict[str, list[Any]] = {name: [] for name in parts}
    for round_ in range(rounds):
        for name, part in parts.items():
            results[name].append(measure(part, round_))
    return results


def parts_table(root: Path, steps: int) -> str:
    parts = {name: Parts(root, overrides, inline) for name, (overrides, inline) in CONFIGURATIONS.items()}
    handovers = alternate(parts, 2, lambda part, _: part.handover(len(part.dataset) // BATCH))
    torch.set_num_threads(1)  # as in a DataLoader worker
    loads = alternate(parts, len(next(iter(parts.values())).dataset) // BATCH, lambda part, round_: part.load(round_ * BATCH))
    torch.set_num_threads(2)
    alternate(parts, 3, lambda part, _: part.step())  # warm-up
    steps_s = alternate(parts, steps, lambda part, _: part.step())
    lines = ["| configuration | `__getitem__` ms/image | collator ms/image | handover ms/batch | training step ms (2 threads) | compute images/s |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in parts:
        item = 1000 * statistics.median(seconds for seconds, _ in loads[name]) / BATCH
        collate = 1000 * statistics.median(seconds for _, seconds in loads[name]) / BATCH
        handover = 1000 * statistics.median(wait for waits in handovers[name] for wait in waits)
        step = statistics.median(steps_s[name])
        lines.append(f"| {name} | {item:.2f} | {collate:.2f} | {handover:.1f} | {1000 * step:.0f} | {BATCH / step:.1f} |")
    return "\n".join(lines)


def runs_table(root: Path, repeats: int, epochs: int) -> str:
    rates: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for repeat in range(repeats):
        for name, (overrides, inline) in CONFIGURATIONS.items():
            collate.INLINE_TENSOR_BYTES = inline
            rates[name].append(run_cvexp(root, epochs, overrides))
            print(f"round {repeat + 1}: {rates[name][-1]:5.1f} images/s  {name}", flush=True)
    before = statistics.median(rates[next(iter(rates))])
    lines = ["| configuration | images/s (median) | runs | against before |", "|---|---:|---|---:|"]
    for name, values in rates.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | {runs_cell(values)} | {statistics.median(values) / before:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of whole runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per configuration in the parts table")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (PEER_WORK / "models" / "tiny-cond-detr").is_dir():
        raise SystemExit(f"{PEER_WORK / 'models' / 'tiny-cond-detr'} is missing: run ../shared/peer-hf/setup_venv.sh and prepare.py "
                         "as ../shared/peer-hf/README.md says.")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        parts = parts_table(Path(tmp), args.steps)
        print(parts, flush=True)
        runs = runs_table(Path(tmp), args.repeats, args.epochs)
    collate.INLINE_TENSOR_BYTES = CONFIGURATIONS["**the defaults** (all three)"][1]
    body = "\n".join([
        f"Tiny Conditional DETR, RBC cells train, {IMAGE_SIZE} px, batch {BATCH}. Parts: measured in one process, the "
        "configurations alternating (data: one thread, every train image once, medians per batch; compute: "
        f"{args.steps} steps on one fixed batch, 2 threads, medians).", "", parts, "",
        f"Whole runs: `cvexp.train`, 2 DataLoader workers, {args.epochs} epochs without evaluation, {args.repeats} rounds of "
        "every configuration in turn.", "", runs])  # fmt: skip
    publish(body, "training-profile", write=not args.no_write)


if __name__ == "__main__":
    main()
