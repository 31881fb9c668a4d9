"""``engine=local``: the model in this process, fed by a ``DataLoader`` that decodes the images."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from cvexp.inference.inputs import PredictionInputs
from cvexp.inference.prediction import ImageResult, PredictionJob


class LocalPredictionEngine:
    """Predicts in this process, one batch at a time.

    Args:
        num_workers: ``DataLoader`` processes decoding images while the model runs (0: in this process).
    """

    def __init__(self, num_workers: int = 0) -> None:
        self.num_workers = int(num_workers)

    def predict(self, job: PredictionJob, inputs: PredictionInputs) -> Iterator[ImageResult]:
        """Each image's results, in input order."""
        predictor = job.load_predictor()
        # The workers only decode; batches are collated here, as a Ray actor collates its own.
        loader = DataLoader(inputs, batch_size=job.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=list)
        for samples in loader:
            yield from job.results_of(predictor, samples)
