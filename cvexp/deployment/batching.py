"""Request batching for the served model: one thread loads and runs the model, several requests' images per forward pass.

MLflow's scoring server loads the model in its main thread and runs each request's ``predict`` in a
thread of a pool (``asyncio.to_thread``). Torch's CPU kernels run on OpenMP, and every thread that
enters torch gets a thread team of its own; with more team threads than cores, OpenMP stops
spinning between parallel regions and every region pays a sleep and a wake-up. Measured on 2 cores
with the default tiny RT-DETR: one image took 8-12 ms in a process's only torch thread and 30-40 ms
in a second one, and eight concurrent requests ran eight forward passes against each other.

:class:`RequestBatcher` runs everything torch does, the loading included, on one model thread. It
takes whatever has queued while it was busy and runs it as one batch: a request alone is answered at
once (no waiting window), and under load the forward passes grow to ``max_batch_size`` images, whose
per-image cost is a fraction of a single image's.

Only images of the same size share a batch: a processor that keeps the aspect ratio pads a batch to
its largest image, and an image's answer must not depend on what others sent alongside it.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Request:
    images: Sequence[np.ndarray]
    future: Future = field(default_factory=Future)
    results: list[Any] = field(init=False)  # one slot per image, filled as its batch ends
    remaining: int = field(init=False)  # images not yet predicted

    def __post_init__(self) -> None:
        self.results = [None] * len(self.images)
        self.remaining = len(self.images)


BatchPredict = Callable[[list[np.ndarray]], list[Any]]


class RequestBatcher:
    """Loads a model and runs its batch prediction for many threads, on one thread of its own.

    Args:
        load: called once on the model thread (the constructor waits for it, and raises its error);
            returns the batch prediction: a list of HWC images → one prediction per image.
        max_batch_size: the most images in one call of the prediction.
    """

    def __init__(self, load: Callable[[], BatchPredict], max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError(f"serving.max_batch_size={max_batch_size}: give at least 1.")
        self.max_batch_size = max_batch_size
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: How many calls of the prediction had each number of images (benchmarks and tests read it).
        self.batch_sizes: Counter[int] = Counter()
        loaded: Future = Future()
        self._ensure_thread(loaded, load)
        self._predict: BatchPredict = loaded.result()

    def predict(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The predictions of ``images``, in their order; blocks until the model thread has run them.

        An error of the model raises here, in every request whose images were in the failing batch.
        """
        if not images:
            return []
        self._ensure_thread()
        request = _Request(images)
        self._queue.put(request)
        return request.future.result()

    def _ensure_thread(self, loaded: Future | None = None, load: Callable[[], BatchPredict] | None = None) -> None:
        # Restarted when missing: a server that forks its workers after loading leaves the thread behind.
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, args=(loaded, load), name="cvexp-model", daemon=True)
                self._thread.start()

    def _run(self, loaded: Future | None, load: Callable[[], BatchPredict] | None) -> None:
        if loaded is not None and load is not None:
            try:
                loaded.set_result(load())
            except BaseException as error:  # noqa: BLE001 - raised by the constructor
                loaded.set_exception(error)
                return
        while True:
            pending = [self._queue.get()]
            queued = len(pending[0].images)
            # Whatever arrived while the last batch ran joins this one.
            while queued < self.max_batch_size:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                queued += len(pending[-1].images)
            self._run_batches(pending)

    def _run_batches(self, pending: list[_Request]) -> None:
        by_shape: dict[tuple[int, ...], list[tuple[_Request, int]]] = {}
        for request in pending:
            for index, image in enumerate(request.images):
                by_shape.setdefault(tuple(image.shape), []).append((request, index))
        for items in by_shape.values():
            for start in range(0, len(items), self.max_batch_size):
                chunk = items[start : start + self.max_batch_size]
                try:
                    predictions = self._predict([request.images[index] for request, index in chunk])
                except BaseException as error:  # noqa: BLE001 - handed to the waiting request threads
                    for request, _ in chunk:
                        if not request.future.done():
                            request.future.set_exception(error)
                    continue
                self.batch_sizes[len(chunk)] += 1
                for (request, index), prediction in zip(chunk, predictions, strict=True):
                    request.results[index] = prediction
                    request.remaining -= 1
                    if request.remaining == 0 and not request.future.done():
                        request.future.set_result(request.results)
