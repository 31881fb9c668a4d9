"""The served model's request batcher: one model thread, concurrent requests in shared forward passes, same answers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cvexp.deployment.batching import RequestBatcher


class SlowBatchModel:
    """A batch prediction that takes long enough for concurrent requests to queue behind it, and records its calls."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.threads: set[str] = set()
        self.batches: list[list[tuple[int, ...]]] = []
        self.fail_on = fail_on

    def load(self):
        self.threads.add(threading.current_thread().name)
        return self.predict

    def predict(self, images: list[np.ndarray]) -> list[float]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([image.shape for image in images])
        time.sleep(0.02)
        if self.fail_on is not None and any(int(image[0, 0, 0]) == self.fail_on for image in images):
            raise ValueError("the model failed on this batch")
        return [float(image.sum()) for image in images]


def _image(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    model = SlowBatchModel()
    batcher = RequestBatcher(model.load, max_batch_size=8)
    requests = [[_image(value)] for value in range(1, 33)] + [[_image(40), _image(41), _image(42)]]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(batcher.predict, requests))
    assert answers == [[float(image.sum()) for image in request] for request in requests]
    # Everything ran on the one model thread, the loading included.
    assert model.threads == {"cvexp-model"}
    # Requests that queued while the model was busy shared a forward pass, never above the limit.
    assert max(batcher.batch_sizes) > 1
    assert max(batcher.batch_sizes) <= 8
    assert sum(size * count for size, count in batcher.batch_sizes.items()) == 35


def test_images_of_different_sizes_never_share_a_batch() -> None:
    model = SlowBatchModel()
    batcher = RequestBatcher(model.load, max_batch_size=8)
    requests = [[_image(value, size=8 + 8 * (value % 3))] for value in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(batcher.predict, requests))
    assert answers == [[float(request[0].sum())] for request in requests]
    assert all(len(set(shapes)) == 1 for shapes in model.batches)


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving() -> None:
    batcher = RequestBatcher(SlowBatchModel(fail_on=7).load, max_batch_size=1)
    with pytest.raises(ValueError, match="failed on this batch"):
        batcher.predict([_image(7)])
    assert batcher.predict([_image(3)]) == [float(_image(3).sum())]
    assert batcher.predict([]) == []


def test_a_model_that_cannot_load_raises_from_the_constructor() -> None:
    def load():
        raise FileNotFoundError("model.safetensors is missing")

    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RequestBatcher(load)
    with pytest.raises(ValueError, match="max_batch_size=0"):
        RequestBatcher(SlowBatchModel().load, max_batch_size=0)
