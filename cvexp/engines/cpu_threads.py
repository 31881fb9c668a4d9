"""Torch's CPU threads follow the cores that other processes leave free, so a busy machine slows a run by its share only.

Torch runs a CPU step on one OpenMP thread per core, split into equal parts; every part must finish
before the next operator starts. When another process takes one of two cores, the thread that shares
it finishes its half late and the other spins waiting for it: measured on 2 cores, a step of the
default training was 2.7x slower beside a busy loop and up to 8x beside a pip install, where one
thread would have run at the speed of one core. :class:`AdaptiveCpuThreads` measures, every few
seconds, how much CPU the rest of the machine used (every process but this one: the run's own
DataLoader workers count too, as they compete for the same cores) and sets torch's threads to the
cores left.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import lightning as L
import psutil
import torch

from cvexp.engines.resume import THREADS_KEY

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_for(max_threads: int, machine_cores: int, others_busy: float, slack: float = 0.25) -> int:
    """Torch threads (1 to ``max_threads``) on a machine of ``machine_cores`` when other processes keep ``others_busy`` cores busy.

    A core counts as taken once others use more than ``slack`` of it: a thread on a core shared with a
    busy process holds the whole step back, while one thread less costs at most that thread's share.
    """
    return max(1, min(max_threads, int(machine_cores - others_busy + slack)))


class _CpuClock:
    """CPU seconds of the whole machine and of this process, to tell how busy everything else was between two reads."""

    def __init__(self) -> None:
        self.process = psutil.Process()

    def read(self) -> tuple[float, float, float]:
        """(wall seconds, busy CPU seconds of the machine, CPU seconds of this process)."""
        machine = psutil.cpu_times()
        # Work of processes on this machine; not idle, I/O wait, or time the hypervisor gave to other guests.
        busy = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
        own = self.process.cpu_times()
        return time.monotonic(), busy, own.user + own.system


class AdaptiveCpuThreads(L.Callback):
    """Sets torch's intra-op threads, while a CPU run trains and validates, to the cores other processes leave free.

    Acts in fits on the CPU whose ``num_threads`` is not fixed (the run's ``num_threads=N``). The run's
    initial thread count is the most it uses; it is restored when the fit ends.

    Args:
        num_threads: the run's fixed thread count; ``None`` adapts.
        interval_s: seconds between two measurements (and two changes).
        slack: share of a core other processes may use before it counts as taken (:func:`threads_for`).
        first_look_s: seconds measured before the first step.
    """

    def __init__(self, num_threads: int | None = None, interval_s: float = 2.0, slack: float = 0.25, first_look_s: float = 0.25) -> None:
        self.enabled = not num_threads
        self.interval_s = interval_s
        self.first_look_s = first_look_s
        self.slack = slack
        self.changes: list[tuple[float, int]] = []  # (seconds into the fit, threads) of every change
        self._clock: _CpuClock | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Fits only: a test after the fit is short, and an evaluation alone keeps torch's default.
        if not self.enabled or stage != "fit" or trainer.strategy.root_device.type != "cpu":
            self._clock = None
            return
        self._clock = _CpuClock()
        self._max_threads = min(usable_cores(), torch.get_num_threads())
        self._machine_cores = psutil.cpu_count() or usable_cores()
        self._initial = torch.get_num_threads()
        self._started = time.monotonic()
        # A first look before the first step: on a busy machine one step with too many threads can take seconds.
        self._last = self._clock.read()
        time.sleep(self.first_look_s)
        self._adapt(force=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._adapt()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._adapt()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A resume starts from the thread count a checkpoint names (cvexp/engines/resume.py): the ceiling,
        # not the count a busy moment left, or the resumed run could never go back up.
        if self._clock is not None:
            checkpoint[THREADS_KEY] = self._max_threads

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._clock is not None and torch.get_num_threads() != self._initial:
            torch.set_num_threads(self._initial)
        self._clock = None

    def _adapt(self, force: bool = False) -> None:
        # The clock first: psutil reads /proc on every call, and this runs after every step.
        if self._clock is None or (time.monotonic() - self._last[0] < self.interval_s and not force):
            return
        wall, busy, own = now = self._clock.read()
        elapsed = wall - self._last[0]
        if elapsed <= 0:
            return
        others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / elapsed
        self._last = now
        threads = threads_for(self._max_threads, self._machine_cores, others, self.slack)
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d: other processes kept %.1f of %d cores busy", torch.get_num_threads(), threads, others,
                     self._machine_cores)  # fmt: skip
            torch.set_num_threads(threads)
            self.changes.append((wall - self._started, threads))
