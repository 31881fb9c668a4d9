"""Torch's threads follow the cores other processes leave free (cvexp.engines.cpu_threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from cvexp.engines.cpu_threads import AdaptiveCpuThreads, threads_for, usable_cores
from cvexp.engines.resume import THREADS_KEY


def test_threads_for_the_cores_left() -> None:
    assert threads_for(2, 2, others_busy=0.05) == 2
    assert threads_for(2, 2, others_busy=1.0) == 1  # a busy loop takes a core
    assert threads_for(2, 2, others_busy=0.5) == 1  # a core half taken holds a thread back
    assert threads_for(2, 2, others_busy=3.0) == 1  # never fewer than one
    assert threads_for(8, 16, others_busy=4.0) == 8  # never more than the run started with
    assert threads_for(16, 16, others_busy=4.0) == 12


@pytest.mark.skipif(usable_cores() < 2, reason="one usable core: there is no thread to give up")
def test_a_busy_process_takes_a_thread_and_the_fit_end_gives_it_back() -> None:
    initial = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    callback = AdaptiveCpuThreads(interval_s=1.0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.2)
        callback.setup(trainer, None, "fit")  # looks before the first step
        assert torch.get_num_threads() <= usable_cores() - 1, callback.changes
        assert callback.changes and callback.changes[-1][1] == torch.get_num_threads()
        time.sleep(1.2)
        callback.on_train_batch_end(trainer, None)  # and again every interval_s
        assert torch.get_num_threads() <= usable_cores() - 1, callback.changes
        # A checkpoint names the ceiling, so that a resumed run can go back up to it.
        checkpoint: dict = {}
        callback.on_save_checkpoint(trainer, None, checkpoint)
        assert checkpoint[THREADS_KEY] == usable_cores()
    finally:
        busy.kill()
        busy.wait()
        callback.teardown(trainer, None, "fit")
    assert torch.get_num_threads() == usable_cores()
    torch.set_num_threads(initial)


def test_a_fixed_thread_count_is_left_alone() -> None:
    initial = torch.get_num_threads()
    callback = AdaptiveCpuThreads(num_threads=initial, interval_s=0.0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        callback.setup(trainer, None, "fit")
        time.sleep(0.5)
        callback.on_train_batch_end(trainer, None)
    finally:
        busy.kill()
        busy.wait()
    assert torch.get_num_threads() == initial and not callback.changes
