"""Every model option's tiny variant trained for the same short budget on the synthetic shapes.

Each option (``conf/model/*.yaml``, or the ones named with ``--models``) trains from random init in
this process, one after the other, with the same data (``data=shapes``, 96 px, batch size 16),
augmentation, optimizer, schedule, seed and epochs, and no recipe features (``recipe=none``); validation runs once, after the last epoch, on
the whole validation split. No MLflow, no test pass or report (``logger=none report=none
test_after_fit=false``), and a deliberate torch thread count (``--threads``, ``num_threads=``).

Recorded per option:

- **val mAP50** (and mAP) after the last epoch;
- **training steps/s**: the inverse of the median step time, a step timed from the end of the
  previous step (or the epoch's start) to its end, so data loading is in and validation is out;
  the first epoch is skipped (warm-up). images/s is that times the batch size;
- the fit's wall time (validation included) and the model's parameter count.

    python benchmarks/model_zoo.py [--models detr yolos ...] [--epochs 20] [--threads 2]
        [--train-batches N] [--val-batches N] [--write] [overrides ...]

Prints a Markdown table; ``--write`` puts it into docs/models.md between the model-zoo markers
(section "CPU benchmark"). Run it on an otherwise idle machine: the steps/s compare only within one run.

**Time to accuracy on the RBC cells** (``--rbc``): every detection option trains on the real RBC cells
(``../shared/datasets/rbc-cells``, the ``rbc_cells`` recipe's data, augmentation, 256 px and batch 8)
for the same wall-clock budget (``--budget-minutes``), once as the ``rbc_cells`` recipe trains (``plain``: ``recipe=none``)
and once with the recipe features (``recipe``: EMA of the weights, multi-scale training, repeat-factor
sampling, no weight decay on biases and norms), then its best checkpoint is tested on the test split.
Each run's epochs are set from its own measured step time, so that its cosine schedule ends within
the budget (Lightning's ``max_time`` stops it at the budget in any case). ``--write`` puts the table
into docs/models.md ("Time to accuracy on the RBC cells").

    python benchmarks/model_zoo.py --rbc [--budget-minutes 4] [--variants plain recipe] [--models ...] [--write]

**The rbc_cells recipe with and without the features** (``--rbc-recipe``): ``+experiment=rbc_cells`` as it
is, and with the ``recipe`` variant's features, side by side (alternating), for ``--seeds`` seeds each:
test mAP50/mAP and the fit time of every run, and their medians.

    python benchmarks/model_zoo.py --rbc-recipe [--seeds 3] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402

from benchmarks.report import publish  # noqa: E402
from benchmarks.training_throughput import compose_config  # noqa: E402
from cvexp.paths import CONFIG_DIR  # noqa: E402
from cvexp.training import run_training  # noqa: E402

MODELS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
# The RBC runs: the rbc_cells recipe's data and sizes, and what each variant adds to a model option's defaults.
RBC = ["+experiment=rbc_cells", "task_name=model_zoo_rbc", "trainer.check_val_every_n_epoch=2"]
VARIANTS = {
    "plain": ["recipe=none"],  # as +experiment=rbc_cells sets it
    # The EMA's warm-up is scaled to runs of a few hundred steps (its default, 2 000, suits COCO's 100 000).
    "recipe": ["callbacks=ema", "callbacks.ema.decay=0.999", "callbacks.ema.warmup_steps=100", "multi_scale=rt_detr", "sampler=repeat_factor",
               "decay_norms_and_biases=false"],
}  # fmt: skip


class StepTimer(L.Callback):
    """Times every training step (end of the previous step, or the epoch's start, to its end) and counts parameters."""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []
        self.parameters = 0

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.parameters = sum(p.numel() for p in module.model.parameters())

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epochs.append([])
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        self.epochs[-1].append(now - self._last)
        self._last = now

    def median_step_seconds(self) -> float:
        measured = [seconds for epoch in self.epochs[1:] for seconds in epoch] or [s for epoch in self.epochs for s in epoch]
        return statistics.median(measured)


@dataclass
class ZooResult:
    model: str
    model_class: str = ""
    adapter: str = ""
    parameters: int = 0
    map_50: float | None = None
    map: float | None = None
    steps_per_second: float | None = None
    images_per_second: float | None = None
    fit_minutes: float | None = None
    steps_per_epoch: int = 0
    batch_size: int = 0
    image_size: int = 0
    seed: int | None = None
    error: str | None = None


def benchmark(model: str, root: Path, overrides: list[str]) -> ZooResult:
    """Trains ``model``'s tiny variant for the budget in ``overrides``; a failure is recorded, not raised."""
    cfg = compose_config(root, [f"model={model}", *overrides])
    result = ZooResult(model, cfg.model.model_class.rsplit(".", 1)[-1], cfg.adapter.name,
                       batch_size=int(cfg.data.batch_size), image_size=int(cfg.data.image_size), seed=cfg.get("seed"))  # fmt: skip
    timer = StepTimer()
    try:
        summary = run_training(cfg, extra_callbacks=[timer])
    except Exception as error:  # one broken option must not cost the others' figures
        traceback.print_exc()
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
        return result
    seconds = timer.median_step_seconds()
    result.parameters = timer.parameters
    result.map_50, result.map = summary.val_metrics.get("map_50"), summary.val_metrics.get("map")
    result.steps_per_second = 1 / seconds
    result.images_per_second = result.batch_size / seconds
    result.steps_per_epoch = len(timer.epochs[0])
    result.fit_minutes = summary.train_seconds / 60
    return result


@dataclass
class BudgetResult:
    model: str
    variant: str
    epochs: int = 0
    test_map_50: float | None = None
    test_map: float | None = None
    steps_per_second: float | None = None
    fit_minutes: float | None = None
    error: str | None = None


def measured_step_seconds(cfg, steps: int = 6) -> tuple[float, int]:  # noqa: ANN001
    """The median seconds of a training step (forward, loss, backward, AdamW) on the run's own batches, and the epoch's step count."""
    import torch

    from cvexp.training import build_training

    module, datamodule = build_training(cfg)
    loader = datamodule.train_dataloader()
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-4)
    module.model.train()
    times = []
    for batch, _ in zip(loader, range(steps), strict=False):
        started = time.perf_counter()
        loss = module.adapter.adapt_output(module(batch)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), len(loader)


def budget_run(model: str, variant: str, root: Path, overrides: list[str], budget_minutes: float) -> BudgetResult:
    """``model`` trained on the RBC cells for ``budget_minutes`` as ``variant`` trains it, then tested; a failure is recorded."""
    result = BudgetResult(model, variant)
    try:
        options = [f"model={model}", *RBC, *VARIANTS[variant], *overrides]
        step_seconds, steps_per_epoch = measured_step_seconds(compose_config(root, options))
        # 80% of the budget in training steps: the rest goes to data loading, validation every other epoch and checkpoints.
        result.epochs = max(2, int(0.8 * budget_minutes * 60 / (step_seconds * steps_per_epoch)))
        hours, minutes = divmod(budget_minutes, 60)
        cfg = compose_config(root, [*options, f"trainer.max_epochs={result.epochs}",
                                    f"+trainer.max_time=00:{int(hours):02d}:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}"])  # fmt: skip
        timer = StepTimer()
        summary = run_training(cfg, extra_callbacks=[timer])
    except Exception as error:  # one broken option must not cost the others' figures
        traceback.print_exc()
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
        return result
    result.test_map_50, result.test_map = summary.test_metrics.get("map_50"), summary.test_metrics.get("map")
    result.steps_per_second = 1 / timer.median_step_seconds()
    result.fit_minutes = summary.train_seconds / 60
    return result


def rbc_run_overrides(args: argparse.Namespace) -> list[str]:
    """What every RBC run of this benchmark adds: the threads, no tracking or report, the shared RBC cells, the user's overrides."""
    return [f"num_threads={args.threads}", "logger=none", "report=none", f"data.root={REPO.parent / 'shared' / 'datasets' / 'rbc-cells'}",
            *args.overrides]  # fmt: skip


def run_recipe_comparison(args: argparse.Namespace) -> None:
    """``+experiment=rbc_cells`` plain and with the recipe features, alternating, ``args.seeds`` seeds each."""
    rows: dict[str, list[tuple[int, float, float, float]]] = {variant: [] for variant in args.variants}
    base = ["+experiment=rbc_cells", *rbc_run_overrides(args)]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for variant in args.variants:
                summary = run_training(compose_config(Path(tmp), [*base, *VARIANTS[variant], f"seed={seed}"]))
                rows[variant].append((seed, summary.test_metrics["map_50"], summary.test_metrics["map"], summary.train_seconds / 60))
                print(f"seed {seed} {variant}: test mAP50 {rows[variant][-1][1]:.3f}, {rows[variant][-1][3]:.1f} min", flush=True)
    lines = [
        f"`+experiment=rbc_cells` (tiny RT-DETR from random init, 256 px, 40 epochs), plain and with the recipe features (EMA decay 0.999 "
        f"with a 100-step warm-up, multi-scale 0.75-1.25, repeat-factor sampling at 0.1, no weight decay on biases and norms), "
        f"alternating, seeds 0-{args.seeds - 1}, {args.threads} torch threads (`python benchmarks/model_zoo.py {' '.join(sys.argv[1:])}`).",
        "",
        "| variant | test mAP50 per seed | test mAP per seed | fit minutes per seed | median mAP50 | median minutes |",
        "|---|---|---|---|---:|---:|",
    ]
    for variant, runs in rows.items():
        lines.append(f"| {variant} | {', '.join(f'{r[1]:.3f}' for r in runs)} | {', '.join(f'{r[2]:.3f}' for r in runs)} "
                     f"| {', '.join(f'{r[3]:.1f}' for r in runs)} | {statistics.median(r[1] for r in runs):.3f} "
                     f"| {statistics.median(r[3] for r in runs):.1f} |")  # fmt: skip
    publish("\n".join(lines), "rbc-recipe-features", write=args.write, path=REPO / "docs" / "models.md")


def budget_markdown(results: list[BudgetResult], args: argparse.Namespace) -> str:
    lines = [
        f"Every detection option's tiny variant, random init, on the RBC cells (`+experiment=rbc_cells`: 256 px, batch 8, strong "
        f"augmentation) for {args.budget_minutes:g} minutes of wall clock each, {args.threads} torch threads, its epochs set from its own "
        "measured step time so that its cosine schedule ends in the budget; the best checkpoint (val mAP, every 2 epochs) on the test "
        f"split (`python benchmarks/model_zoo.py {' '.join(sys.argv[1:])}`). `recipe`: EMA of the weights (decay 0.999, warm-up 100 "
        "steps), multi-scale training (0.75-1.25), repeat-factor sampling (threshold 0.1), no weight decay on biases and norms.",
        "",
        "| option | variant | epochs | test mAP50 | test mAP | steps/s | fit time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| `{r.model}` | {r.variant} | | failed: {r.error} | | | |")
            continue
        lines.append(f"| `{r.model}` | {r.variant} | {r.epochs} | {r.test_map_50:.3f} | {r.test_map:.3f} | {r.steps_per_second:.2f} "
                     f"| {r.fit_minutes:.1f} min |")  # fmt: skip
    return "\n".join(lines)


def markdown(results: list[ZooResult], args: argparse.Namespace) -> str:
    done = [r for r in results if not r.error]
    budget = f"{done[0].steps_per_epoch} steps of {done[0].batch_size} images" if done else "the same steps"
    validation = f"the first {args.val_batches} batches of the validation split" if args.val_batches else "the whole validation split"
    lines = [
        f"The tiny variant of each option, random init, on the synthetic shapes ({done[0].image_size if done else '?'} px): "
        f"{args.epochs} epochs of {budget}, seed {done[0].seed if done else '?'}, {args.threads} torch threads, validated once after the last epoch on "
        f"{validation} (`python benchmarks/model_zoo.py {' '.join(sys.argv[1:])}`). Steps/s: the inverse of the median "
        "training-step time (data loading included, validation left out, first epoch skipped); the fit time includes the validation.",
        "",
        "| option | model class | adapter | parameters | val mAP50 | val mAP | steps/s | images/s | fit time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| `{r.model}` | {r.model_class} | `{r.adapter}` | | failed: {r.error} | | | | |")
            continue
        lines.append(f"| `{r.model}` | {r.model_class} | `{r.adapter}` | {r.parameters / 1e6:.2f} M | {r.map_50:.3f} | {r.map:.3f} "
                     f"| {r.steps_per_second:.2f} | {r.images_per_second:.1f} | {r.fit_minutes:.1f} min |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, metavar="OPTION", help=f"default: all of {MODELS}")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (num_threads=)")
    parser.add_argument("--train-batches", type=int, default=None, help="limit each epoch to N batches (quick checks)")
    parser.add_argument("--val-batches", type=int, default=None, help="validate on N batches only (quick checks)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/models.md's CPU benchmark section")
    parser.add_argument("--rbc", action="store_true", help="time to accuracy on the RBC cells (see the module doc)")
    parser.add_argument("--budget-minutes", type=float, default=4.0, help="--rbc: each run's wall-clock budget")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="--rbc: which variants")
    parser.add_argument("--rbc-recipe", action="store_true", help="the rbc_cells recipe with and without the recipe features")
    parser.add_argument("--seeds", type=int, default=3, help="--rbc-recipe: seeds per variant")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, the same for every option")
    args = parser.parse_args()

    if args.rbc:
        run_budgets(args)
        return
    if args.rbc_recipe:
        run_recipe_comparison(args)
        return
    # recipe=none: the architectures compared under one recipe, not each under its paper's.
    overrides = [f"trainer.max_epochs={args.epochs}", f"trainer.check_val_every_n_epoch={args.epochs}", "trainer.num_sanity_val_steps=0",
                 f"num_threads={args.threads}", "logger=none", "report=none", "test_after_fit=false", "recipe=none"]  # fmt: skip
    if args.train_batches:
        overrides.append(f"+trainer.limit_train_batches={args.train_batches}")
    if args.val_batches:
        overrides.append(f"+trainer.limit_val_batches={args.val_batches}")
    overrides += args.overrides
    results = []
    with tempfile.TemporaryDirectory() as tmp:  # one synthetic dataset for every option
        for model in args.models:
            started = time.perf_counter()
            results.append(benchmark(model, Path(tmp), overrides))
            r = results[-1]
            status = r.error or f"val mAP50 {r.map_50:.3f}, {r.steps_per_second:.2f} steps/s"
            print(f"{model}: {status} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    table = markdown(results, args)
    publish(table, "model-zoo", write=args.write, path=REPO / "docs" / "models.md")


def run_budgets(args: argparse.Namespace) -> None:
    from tests.conftest import model_tasks

    models = [model for model in args.models if model_tasks()[model] == "detection"]
    overrides = rbc_run_overrides(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for variant in args.variants:  # side by side: the variants of one option run back to back
                started = time.perf_counter()
                results.append(budget_run(model, variant, Path(tmp), overrides, args.budget_minutes))
                r = results[-1]
                status = r.error or f"test mAP50 {r.test_map_50:.3f} after {r.epochs} epochs, {r.steps_per_second:.2f} steps/s"
                print(f"{model} ({variant}): {status} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    publish(budget_markdown(results, args), "rbc-time-to-accuracy", write=args.write, path=REPO / "docs" / "models.md")


if __name__ == "__main__":
    main()
