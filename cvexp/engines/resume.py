"""Exact resumption: a run killed at any moment and resumed from ``last.ckpt`` ends as if never stopped.

Lightning restores the model, optimizer, scheduler and loop counters; the pieces here restore the
rest of what decides the next step, and keep ``last.ckpt`` whole:

- :func:`random_states` / :func:`restore_random_states`: the generators of torch (CPU and CUDA),
  numpy and Python, saved in every checkpoint and put back just before the first step after a
  resume (``VisionTaskModule``), so random queries, dropout and denoising draw what they would have;
- the data order and augmentation come from ``(seed, epoch, image)`` alone and the DataModule skips
  what the epoch already trained on (:mod:`cvexp.data.sampling`);
- :func:`resume_state` reads what the run itself needs before it starts: the MLflow run to continue
  and the torch thread count of the interrupted run (floating-point sums depend on it);
- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file and renames it, so a kill
  during the write leaves the previous ``last.ckpt`` intact, never a truncated one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

RANDOM_STATE_KEY = "cvexp_random_state"
THREADS_KEY = "cvexp_num_threads"


def random_states() -> dict[str, Any]:
    """Every generator's state, as plain data and tensors (a checkpoint is read with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Puts back what :func:`random_states` saved."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass(frozen=True)
class ResumeState:
    """What a run resumed from a checkpoint takes from it before it starts."""

    mlflow_run_id: str | None
    num_threads: int | None


def resume_state(ckpt_path: str | Path) -> ResumeState:
    """The MLflow run and thread count stored in a cvexp checkpoint (memory-mapped: the tensors are not read)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    metadata = (checkpoint.get("cvexp") or {}).get("metadata") or {}
    threads = checkpoint.get(THREADS_KEY)
    return ResumeState(metadata.get("mlflow_run_id"), int(threads) if threads else None)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but all-or-nothing: a temporary file in the same folder, then a rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, temporary, storage_options)
            os.replace(temporary, target)  # atomic on POSIX: readers see the old file or the new one
        finally:
            temporary.unlink(missing_ok=True)
