"""Training throughput of ``cvexp.train`` against the Hugging Face Trainer's object-detection example, side by side.

Same machine, model, data, image size, batch and DataLoader workers: the tiny Conditional DETR that
``../shared/peer-hf/prepare.py`` saves (loaded by cvexp with ``model.pretrained=``), the RBC cells
train split (210 images), 416 px, batch 8, 2 workers, no evaluation during training. The peer is the
official ``run_object_detection.py`` run unchanged by ``../shared/peer-hf/run.sh`` (its README says
how to get the example and build its venv; nothing of it is in this repository). The two alternate,
``--repeats`` times each.

Images/s: the peer's is the Trainer's ``train_samples_per_second`` (train images over ``train()``'s
run time); cvexp's is train images over the summed wall time of its training epochs (from the first
step of each epoch to its end: Lightning's set-up and the sanity check are not counted, as the
Trainer's run time does not count the script's set-up).

    python benchmarks/vs_hf_trainer.py [--repeats 3] [--epochs 3] [--no-write] [cvexp overrides ...]

Writes the table into docs/benchmarks.md between the vs-hf-trainer markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import publish, runs_cell  # noqa: E402
from benchmarks.training_throughput import EpochTimer, compose_config  # noqa: E402
from cvexp.training import run_training  # noqa: E402

PEER_DIR = REPO.parent / "shared" / "peer-hf"
PEER_WORK = Path(os.environ.get("PEER_HF_WORK", "/tmp/peer-hf"))
RBC_CELLS = Path(os.environ.get("CVEXP_RBC_CELLS", REPO.parent / "shared" / "datasets" / "rbc-cells"))
IMAGE_SIZE, BATCH, WORKERS = 416, 8, 2


def run_peer(epochs: int, out: Path) -> float:
    """The peer's train images/s for ``epochs`` epochs without evaluation."""
    env = {**os.environ, "EVAL_STRATEGY": "no", "EPOCHS": str(epochs), "IMG": str(IMAGE_SIZE), "BATCH": str(BATCH),
           "WORKERS": str(WORKERS), "OUT": str(out), "WORK": str(PEER_WORK), "RBC_ROOT": str(RBC_CELLS)}  # fmt: skip
    done = subprocess.run(["bash", str(PEER_DIR / "run.sh")], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{PEER_DIR / 'run.sh'} exited with {done.returncode}: {done.stderr[-2000:]}")
    return float(json.loads((out / "peer_bench.json").read_text())["images_per_s_excl_eval"])


def run_cvexp(root: Path, epochs: int, overrides: list[str]) -> float:
    """cvexp's train images/s for ``epochs`` epochs, no validation, on the peer's model and data settings."""
    cfg = compose_config(root, ["data=rbc_cells", f"data.root={RBC_CELLS}", "model=conditional_detr",
                                f"model.pretrained={PEER_WORK / 'models' / 'tiny-cond-detr'}", f"data.image_size={IMAGE_SIZE}",
                                f"data.batch_size={BATCH}", f"data.num_workers={WORKERS}", f"trainer.max_epochs={epochs}",
                                "trainer.check_val_every_n_epoch=1000", "trainer.num_sanity_val_steps=0", "logger=none",
                                "test_after_fit=false", "report=none", *overrides])  # fmt: skip
    timer = EpochTimer()
    run_training(cfg, extra_callbacks=[timer])
    return sum(images for _, images in timer.epochs) / sum(seconds for seconds, _ in timer.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("overrides", nargs="*", help="cvexp config overrides (its switches, e.g. pixels=processor pixels.channels_last=false)")
    args = parser.parse_args()
    for needed, how in ((PEER_WORK / "venv" / "bin" / "python", "run ../shared/peer-hf/setup_venv.sh"),
                        (PEER_WORK / "run_object_detection.py", "get the example as ../shared/peer-hf/README.md says"),
                        (RBC_CELLS / "train", "set CVEXP_RBC_CELLS to the RBC cells dataset")):  # fmt: skip
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: {how}.")
    peer, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ("peer", "cvexp") if repeat % 2 == 0 else ("cvexp", "peer")
            for side in order:
                if side == "peer":
                    peer.append(run_peer(args.epochs, Path(tmp) / f"peer-{repeat}"))
                else:
                    ours.append(run_cvexp(Path(tmp) / "cvexp", args.epochs, args.overrides))
                print(f"repeat {repeat + 1}: {side:6s} {(peer if side == 'peer' else ours)[-1]:.1f} images/s", flush=True)
    ratio = statistics.median(ours) / statistics.median(peer)
    switches = " ".join(args.overrides) or "none (the defaults)"
    lines = [f"Tiny Conditional DETR (`../shared/peer-hf/prepare.py`), RBC cells train (210 images), {IMAGE_SIZE} px, batch {BATCH}, "
             f"{WORKERS} DataLoader workers, {args.epochs} epochs without evaluation, {args.repeats} alternating repeats; "
             f"cvexp overrides: {switches}.", "",
             "| | images/s (median) | runs |", "|---|---:|---|",
             f"| HF Trainer example (`run_object_detection.py`) | {statistics.median(peer):.1f} | {runs_cell(peer)} |",
             f"| `cvexp.train` | {statistics.median(ours):.1f} | {runs_cell(ours)} |",
             f"| **ratio** | **{ratio:.2f}** | goal ≥ 1.2 |"]  # fmt: skip
    publish("\n".join(lines), "vs-hf-trainer", write=not args.no_write)


if __name__ == "__main__":
    main()
