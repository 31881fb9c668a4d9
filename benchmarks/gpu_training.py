"""Training and inference on one GPU: the full-size RT-DETR, fp32 against bf16-mixed, eager against ``torch.compile``, and against the HF Trainer.

The model is ``model=rt_detr`` at its ``hub_name``'s sizes (PekingU/rtdetr_r18vd: ResNet-18-vd backbone,
hidden 256, 1 encoder and 3 decoder layers, 300 queries, 100 denoising queries; random init: the hub is
out of reach on the GPU machine), at 640 px, batch 16. Every row runs in its own process (clean peak
memory, no compiled code shared), for a fixed number of steps:

- **training on the synthetic shapes** (``data=shapes`` written at 640 px), fp32 and ``bf16-mixed``,
  eager and ``compile=true``: steady images/s (steps after the first ``--warmup``), the first step's
  seconds (compiling, cuDNN's search), and peak GPU memory;
- **cvexp against the HF Trainer's object-detection example** on the RBC cells at 640 px, batch 16,
  the same workers, the same saved model (``model.pretrained=``; the example's ``--model_name_or_path``),
  fp32 and bf16: images over the whole ``fit``/``train()`` (first steps included, for both);
- **inference**: the model's forward at batch 16 (``no_grad``, eval mode), eager and compiled.

    python benchmarks/gpu_training.py --out DIR [--steps 60] [--pair-steps 100] [--deadline-s 450]
        [--peer-dir .gpu/peer --peer-data .gpu/peer-data --rbc .gpu/rbc-cells]

The peer (``--peer-dir``) is ``../shared/peer-hf`` with the example file beside it (its README says how to
get it; nothing of it is in this repository) and ``--peer-data`` its prepared RBC parquet. The synthetic data and
the saved model go under ``--work``. Rows that would start after ``--deadline-s`` are skipped and say so. Writes ``gpu_training.json`` and
``gpu_training.md`` under ``--out`` (docs/benchmarks.md, "Training on a GPU", is written from them by hand:
its figures name the machine, which report.py's CPU line does not).

On the device tool's GPU machine (no package index there) everything it needs travels in ``.gpu/``
(ignored by git, named in ``carry``): ``wheels/`` (``pip download --python-version 3.12
--only-binary=:all: --no-deps`` of transformers, hydra-core, omegaconf, albumentations, albucore,
pydantic and pydantic-core, annotated-types, typing-inspection, typing-extensions, simsimd,
stringzilla, pycocotools, faster-coco-eval, datasets, dill, multiprocess, and the antlr4 4.9.3
sdist), ``peer/`` (``../shared/peer-hf`` and the example file), ``peer-data/`` (its ``prepare.py``
output) and ``rbc-cells/``; the command installs the wheels with ``pip install --no-index --no-deps
--no-build-isolation .gpu/wheels/*`` and runs this script with ``logger=none`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# PekingU/rtdetr_r18vd's sizes over the tiny CPU defaults of conf/model/rt_detr_family/tiny.yaml.
FULL_SIZE = [
    "model=rt_detr", "model.config.backbone_config.embedding_size=64", "model.config.backbone_config.hidden_sizes=[64,128,256,512]",
    "model.config.backbone_config.depths=[2,2,2,2]", "model.config.encoder_in_channels=[128,256,512]",
    "model.config.encoder_hidden_dim=256", "model.config.encoder_attention_heads=8", "model.config.encoder_ffn_dim=1024",
    "model.config.d_model=256", "model.config.decoder_in_channels=[256,256,256]", "model.config.decoder_attention_heads=8",
    "model.config.decoder_ffn_dim=1024", "model.config.num_queries=300", "model.config.num_denoising=100",
]  # fmt: skip
# Timing only: no validation, checkpoints, test, report or tracking.
QUIET = ["trainer.check_val_every_n_epoch=1000", "trainer.num_sanity_val_steps=0", "test_after_fit=false", "report=none",
         "logger=none", "~callbacks.model_checkpoint", "~callbacks.last_checkpoint", "~callbacks.model_summary"]  # fmt: skip


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU)"


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def step_timer(warmup: int):
    """A Lightning callback timing the fit, the first step, and the steady steps after ``warmup`` (one host sync at each edge)."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.steps, self.images, self.first_step_s, self.steady = 0, 0, None, None

        def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
            synchronize()
            self.fit_start = self.step_start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            self.steps += 1
            self.images += len(batch["targets"])
            if self.steps == 1:
                synchronize()
                self.first_step_s = time.perf_counter() - self.step_start
            if self.steps == warmup:
                synchronize()
                self.steady_start, self.steady_images = time.perf_counter(), self.images

        def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
            synchronize()
            end = time.perf_counter()
            self.fit_s = end - self.fit_start
            if self.steps > warmup:
                self.steady = (self.images - self.steady_images) / (end - self.steady_start)

    return StepTimer()


def cvexp_row(args: argparse.Namespace, overrides: list[str], steps: int) -> dict:
    """One cvexp training run of ``steps`` steps in this process."""
    from benchmarks.training_throughput import compose_config
    from cvexp.training import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(Path(tmp), [*FULL_SIZE, f"data.batch_size={args.batch}", f"+trainer.max_steps={steps}", "trainer.max_epochs=-1",
                                         *QUIET, *overrides])  # fmt: skip
        timer = step_timer(args.warmup)
        run_training(cfg, extra_callbacks=[timer])
    return {"steps": timer.steps, "images_per_s_steady": timer.steady, "images_per_s_fit": timer.images / timer.fit_s,
            "first_step_s": timer.first_step_s, "peak_gib": peak_memory_gib()}  # fmt: skip


def inference_row(args: argparse.Namespace, compile_model: bool, bf16: bool, iterations: int = 30) -> dict:
    """The model's forward at ``--batch`` and ``--size``: images/s over ``iterations`` after 5 warm-ups, and peak memory."""
    import torch

    from benchmarks.training_throughput import compose_config
    from cvexp.training import build_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(Path(tmp), [*FULL_SIZE, *QUIET, *shapes_data(args)])
        module, _ = build_training(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = module.model.to(device).eval()
    memory_format = torch.channels_last if cfg.pixels.get("channels_last") else torch.contiguous_format
    pixels = torch.rand(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    forward = torch.compile(model) if compile_model else model
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for i in range(5 + iterations):
            if i == 5:
                synchronize()
                first_s, started = time.perf_counter() - started, time.perf_counter()
            forward(pixel_values=pixels)
        synchronize()
    return {"images_per_s_steady": args.batch * iterations / (time.perf_counter() - started), "first_step_s": first_s, "peak_gib": peak_memory_gib()}


def peer_row(args: argparse.Namespace, model_dir: Path, bf16: bool) -> dict:
    """The HF Trainer's object-detection example for ``--pair-steps`` steps on the same model, data, size, batch and workers."""
    with tempfile.TemporaryDirectory() as out:
        bench = Path(out) / "peer_bench.json"
        command = [sys.executable, str(args.peer_dir / "hf_launch.py"), str(args.peer_dir / "run_object_detection.py"),
                   "--model_name_or_path", str(model_dir), "--dataset_name", str(args.peer_data), "--output_dir", out,
                   "--do_train", "true", "--do_eval", "false", "--max_steps", str(args.pair_steps), "--image_square_size", str(args.size),
                   "--per_device_train_batch_size", str(args.batch), "--learning_rate", "1e-4", "--weight_decay", "1e-4",
                   "--dataloader_num_workers", str(args.workers), "--remove_unused_columns", "false", "--eval_strategy", "no",
                   "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none", "--disable_tqdm", "true",
                   "--seed", "1337", "--bf16", str(bf16).lower()]  # fmt: skip
        env = {**os.environ, "PEER_BENCH_JSON": str(bench), "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HOME": str(Path(out) / "hf-home"), "NO_ALBUMENTATIONS_UPDATE": "1"}  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the example exited with {done.returncode}: {done.stderr[-3000:]}")
        measured = json.loads(bench.read_text())
    return {"steps": measured["global_step"], "images_per_s_fit": measured["images_per_s_excl_eval"], "peak_gib": None}


def save_pair_model(args: argparse.Namespace, model_dir: Path) -> None:
    """The full-size model for the RBC classes, random init, with its image processor: what both sides of the pair load."""
    from benchmarks.training_throughput import compose_config
    from cvexp.training import build_training

    with tempfile.TemporaryDirectory() as tmp:
        module, _ = build_training(compose_config(Path(tmp), [*FULL_SIZE, *QUIET, *rbc_data(args)]))
    module.model.save_pretrained(model_dir)
    module.image_processor.save_pretrained(model_dir)


def rbc_data(args: argparse.Namespace) -> list[str]:
    return ["data=rbc_cells", f"data.root={args.rbc.resolve()}", f"data.image_size={args.size}", f"data.num_workers={args.workers}"]


def shapes_data(args: argparse.Namespace) -> list[str]:
    # Written once, under --work, and read by every shapes row.
    return [f"data.root={args.work / 'shapes'}", f"data.image_size={args.size}",
            f"data.prepare.image_size={args.size}", f"data.prepare.num_train={args.num_train}", "data.prepare.num_val=16", "data.prepare.num_test=16",
            f"data.num_workers={args.workers}"]  # fmt: skip


def rows(args: argparse.Namespace, model_dir: Path) -> list[tuple[str, str, list[str]]]:
    """(name, kind, arguments) of every row, cheapest first: the compiled ones, whose compile time is unknown, last."""
    bf16 = ["trainer.precision=bf16-mixed"]
    fp32 = ["trainer.precision=32-true"]
    pretrained = [f"model.pretrained={model_dir}"]
    listed = [
        ("train shapes fp32 eager", "cvexp", [*shapes_data(args), *fp32]),
        ("train shapes bf16 eager", "cvexp", [*shapes_data(args), *bf16]),
        ("inference fp32 eager", "inference", ["fp32", "eager"]),
        ("inference bf16 eager", "inference", ["bf16", "eager"]),
        ("RBC cvexp fp32", "cvexp-pair", [*rbc_data(args), *pretrained, *fp32]),
        ("RBC HF Trainer fp32", "peer", ["fp32"]),
        ("RBC cvexp bf16", "cvexp-pair", [*rbc_data(args), *pretrained, *bf16]),
        ("RBC HF Trainer bf16", "peer", ["bf16"]),
        ("train shapes bf16 compile", "cvexp", [*shapes_data(args), *bf16, "compile=true"]),
        ("inference bf16 compile", "inference", ["bf16", "compile"]),
        ("train shapes fp32 compile", "cvexp", [*shapes_data(args), *fp32, "compile=true"]),
    ]
    return [row for row in listed if not args.only or any(word in row[0] for word in args.only)]


def run_row(args: argparse.Namespace, name: str, kind: str, arguments: list[str], model_dir: Path) -> dict:
    """One row, in this process (``--row``)."""
    if kind == "cvexp":
        return cvexp_row(args, arguments, args.steps)
    if kind == "cvexp-pair":
        return cvexp_row(args, arguments, args.pair_steps)
    if kind == "inference":
        return inference_row(args, compile_model="compile" in arguments, bf16="bf16" in arguments)
    return peer_row(args, model_dir, bf16="bf16" in arguments)


def markdown(results: list[dict], args: argparse.Namespace, device: str) -> str:
    def cell(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        f"{device}; full-size RT-DETR (PekingU/rtdetr_r18vd's sizes, random init), {args.size} px, batch {args.batch}, "
        f"{args.workers} DataLoader workers; each row in its own process (`python benchmarks/gpu_training.py {' '.join(sys.argv[1:])}`).",
        "",
        "| row | steps | img/s steady | img/s whole fit | first step s | peak GiB | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r.get('steps', '–')} | {cell(r.get('images_per_s_steady'))} | {cell(r.get('images_per_s_fit'))} "
                     f"| {cell(r.get('first_step_s'), 2)} | {cell(r.get('peak_gib'), 2)} | {r.get('error', '')} |")  # fmt: skip
    by_name = {r["name"]: r for r in results}
    for precision in ("fp32", "bf16"):
        ours, peer = by_name.get(f"RBC cvexp {precision}", {}), by_name.get(f"RBC HF Trainer {precision}", {})
        if ours.get("images_per_s_fit") and peer.get("images_per_s_fit"):
            lines.append(f"\ncvexp / HF Trainer, {precision}: **{ours['images_per_s_fit'] / peer['images_per_s_fit']:.2f}×**")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=640, help="image size (square)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=480, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each shapes row")
    parser.add_argument("--pair-steps", type=int, default=100, help="training steps of each RBC row (cvexp and the HF Trainer)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the steady images/s")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers, both sides")
    parser.add_argument("--deadline-s", type=float, default=450, help="start no row after this many seconds")
    parser.add_argument("--row-timeout-s", type=float, default=240, help="a row's process is stopped after this")
    parser.add_argument("--peer-dir", type=Path, default=REPO / ".gpu" / "peer")
    parser.add_argument("--peer-data", type=Path, default=REPO / ".gpu" / "peer-data")
    parser.add_argument("--rbc", type=Path, default=REPO / ".gpu" / "rbc-cells")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cvexp-gpu", help="the data and the saved model")
    parser.add_argument("--only", nargs="*", help="rows whose name holds one of these words")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run this one row and print its json
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.row:
        name, kind, arguments = next(row for row in rows(args, args.model_dir) if row[0] == args.row)
        print("ROW " + json.dumps(run_row(args, name, kind, arguments, args.model_dir)), flush=True)
        return

    started, device = time.perf_counter(), gpu_name()
    model_dir = args.work / "rt_detr_r18vd_rbc"
    if any(kind in ("cvexp-pair", "peer") for _, kind, _ in rows(args, model_dir)):
        save_pair_model(args, model_dir)
    results = []
    for name, _kind, _ in rows(args, model_dir):
        elapsed = time.perf_counter() - started
        result = {"name": name}
        if elapsed > args.deadline_s:
            result["error"] = f"skipped: {elapsed:.0f} s past, the deadline is {args.deadline_s:.0f} s"
        else:
            timeout = min(args.row_timeout_s, args.deadline_s + 60 - elapsed)
            command = [sys.executable, __file__, "--row", name, "--model-dir", str(model_dir), *sys.argv[1:]]
            print(f"[{elapsed:5.0f} s, {time.strftime('%H:%M:%S')}] {name} (timeout {timeout:.0f} s)", flush=True)
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
                measured = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
                if done.returncode == 0 and measured:
                    result.update(json.loads(measured[-1]))
                else:
                    result["error"] = f"exit {done.returncode}"
                    print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", flush=True)
            except subprocess.TimeoutExpired:
                result["error"] = f"stopped after {timeout:.0f} s"
        results.append(result)
        print(f"    {json.dumps(result)}", flush=True)
        (args.out / "gpu_training.json").write_text(json.dumps({"device": device, "results": results}, indent=1))
    table = markdown(results, args, device)
    (args.out / "gpu_training.md").write_text(table + "\n")
    print(f"{table}\ndone in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
