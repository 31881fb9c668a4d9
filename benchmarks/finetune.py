"""Fine-tuning from a local artifact against training from random init, on the RBC cells, for the same budget.

1. Pretrain the default tiny RT-DETR on the synthetic shapes (``python -m cvexp.train`` with 50
   queries, the RBC recipe's count, so that both RBC runs below have the same architecture), or take
   ``--pretrained <run dir>/model``. Its model artifact is the pretrained model.
2. Train on the RBC cells (other classes: red and white blood cells) with ``+experiment=rbc_cells``
   for ``--epochs`` epochs, validating every epoch:

   - **from scratch**: random init (the recipe as it is);
   - **fine-tuned, same recipe**: ``model.pretrained=<artifact>``, everything else equal: the effect of the weights alone;
   - **fine-tuned, finetune_local**: ``+experiment=[rbc_cells,finetune_local]`` (the backbone at 0.3x the learning rate).

Every epoch's checkpoint is kept; after training, each is evaluated on the test split through
the one inference path (:class:`cvexp.inference.predictor.Predictor`). Recorded per run and epoch:
val mAP50 (logged by the training) and test mAP50. Seeds, data order and augmentation are the same
for every run.

    python benchmarks/finetune.py [--epochs 20] [--pretrained PATH] [--threads 2] [--write]

The pretrained model is kept in ``outputs/benchmarks/finetune/pretrained_model`` (a model artifact), so
that ``--pretrained`` can reuse it.

``--write`` puts the table into docs/benchmarks.md (section ``finetune``). Needs ../shared/datasets/rbc-cells
(or CVEXP_RBC_CELLS). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks.report import publish  # noqa: E402
from benchmarks.training_throughput import compose_config  # noqa: E402
from cvexp.evaluation.evaluator import evaluate_predictions, model_split  # noqa: E402
from cvexp.inference.predictor import Predictor  # noqa: E402
from cvexp.training import run_training  # noqa: E402

RBC_CELLS = Path(os.environ.get("CVEXP_RBC_CELLS", REPO.parent / "shared" / "datasets" / "rbc-cells"))
QUERIES = 50  # the RBC recipe's (up to 33 cells per image)
KEPT = REPO / "outputs" / "benchmarks" / "finetune" / "pretrained_model"


class ValidationHistory(L.Callback):
    """val/map_50 after every validation, by epoch."""

    def __init__(self) -> None:
        self.map_50: dict[int, float] = {}

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/map_50" in trainer.callback_metrics:
            self.map_50[trainer.current_epoch] = float(trainer.callback_metrics["val/map_50"])


def pretrain(root: Path, threads: int) -> Path:
    cfg = compose_config(root, [f"num_threads={threads}", f"model.config.num_queries={QUERIES}", "logger=none", "report=none"])
    started = time.perf_counter()
    summary = run_training(cfg)
    print(f"pretrained on the shapes in {(time.perf_counter() - started) / 60:.1f} min: val mAP50 {summary.val_metrics.get('map_50', float('nan')):.3f}")
    shutil.rmtree(KEPT, ignore_errors=True)
    shutil.copytree(summary.artifact_dir, KEPT)
    return KEPT


def train_rbc(root: Path, name: str, overrides: list[str], epochs: int, threads: int) -> dict[str, object]:
    history = ValidationHistory()
    cfg = compose_config(root / re.sub(r"\W+", "_", name), [
        *overrides, f"data.root={RBC_CELLS}", f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=1",
        f"num_threads={threads}", "logger=none", "report=none", "test_after_fit=false",
        "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='epoch{epoch:03d}'",
    ])  # fmt: skip
    started = time.perf_counter()
    summary = run_training(cfg, extra_callbacks=[history])
    minutes = (time.perf_counter() - started) / 60
    test: dict[int, float] = {}
    dataset = None
    for checkpoint in sorted(Path(summary.best_model_path).parent.glob("epoch*.ckpt")):
        predictor = Predictor.load(checkpoint, device="cpu")
        if dataset is None:
            dataset = model_split(predictor, None, "test", str(checkpoint))[0]
        predictions = predictor.predict_dataset(dataset, batch_size=10, description=f"{name}: {checkpoint.stem}")
        test[int(re.search(r"epoch(\d+)", checkpoint.stem)[1])] = evaluate_predictions(predictions, predictor.label_map.categories)[1].metrics["map_50"]
    print(f"{name}: {minutes:.1f} min, val mAP50 by epoch {[round(v, 3) for v in history.map_50.values()]}")
    return {"name": name, "val": history.map_50, "test": test, "minutes": minutes, "weights": summary.artifact_dir}


def table(runs: list[dict], epochs: int) -> str:
    header = "| epoch | " + " | ".join(f"{run['name']} val | test" for run in runs) + " |"
    lines = [header, "|---:|" + "---:|---:|" * len(runs)]
    for epoch in range(epochs):
        cells = []
        for run in runs:
            val, test = run["val"].get(epoch), run["test"].get(epoch)
            cells += [f"{val:.3f}" if val is not None else "", f"{test:.3f}" if test is not None else ""]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    lines.append("| minutes | " + " | ".join(f"{run['minutes']:.1f} | " for run in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pretrained", type=Path, default=None, help="a model artifact to fine-tune (default: pretrain one now)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if not (RBC_CELLS / "train" / "_annotations.coco.json").is_file():
        raise SystemExit(f"the RBC cells dataset is not at {RBC_CELLS}: set CVEXP_RBC_CELLS to its folder.")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="cvexp-finetune-") as tmp:
        root = Path(tmp)
        artifact = args.pretrained or pretrain(root / "pretrain", args.threads)
        runs = [
            train_rbc(root, "from scratch", ["+experiment=rbc_cells"], args.epochs, args.threads),
            train_rbc(root, "fine-tuned, same recipe", ["+experiment=rbc_cells", f"model.pretrained={artifact}"], args.epochs, args.threads),
            train_rbc(root, "fine-tuned, finetune_local", ["+experiment=[rbc_cells,finetune_local]", f"model.pretrained={artifact}"],
                      args.epochs, args.threads),  # fmt: skip
        ]
    body = "\n".join([
        f"RBC cells, `+experiment=rbc_cells` (tiny RT-DETR, {QUERIES} queries, 256 px, batch 8), {args.epochs} epochs, validated every "
        f"epoch (val: 20 images); test mAP50 of every epoch's checkpoint (10 images) through `Predictor`. Pretrained model: "
        + (f"the default run on the synthetic shapes with {QUERIES} queries (kept in `{KEPT.relative_to(REPO)}`)."
           if args.pretrained is None or args.pretrained.resolve() == KEPT.resolve() else f"`{args.pretrained}`."),
        "",
        table(runs, args.epochs),
    ])
    publish(body, "finetune", write=args.write)


if __name__ == "__main__":
    main()
