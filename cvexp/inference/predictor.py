"""The predictor: a trained model loaded from its artifact or checkpoint, run over batches on any device.

It is the one inference path of cvexp: ``cvexp.evaluate``, ``cvexp.predict``, ``cvexp.register``,
``cvexp.monitor`` and the served MLflow model all load a :class:`Predictor` and call it; the
training run writes the artifact it loads (:mod:`cvexp.artifact`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cvexp.adapters.base import OutputAdapter, Prediction
from cvexp.artifact import LoadedModel, ModelMetadata, load_model, save_artifact
from cvexp.data.collate import BatchCollator
from cvexp.data.labels import LabelMap
from cvexp.data.pixels import TorchPixels
from cvexp.tasks import Task, task_named

#: A prediction and the target (or :class:`~cvexp.data.targets.ImageInfo`) of its image.
PredictedSample = tuple[Prediction, Any]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """A trained model with everything needed to feed it and read its outputs.

    Args:
        model: the Hugging Face model (put in eval mode on ``device``).
        image_processor: the image processor it was trained with.
        adapter: its output adapter (built with the model's label map).
        metadata: the model's metadata (task, categories, image size, weights, metrics, training config).
        device: where to run it (``auto``: CUDA when available).

    Attributes:
        task: the model's task (:mod:`cvexp.tasks`), as its metadata names it: how its predictions
            are scored, reported, served and monitored.
        model_file: the file in the model artifact that runs, when not its PyTorch weights (an export: ``model.onnx``).
    """

    #: What serving the PyTorch model needs besides cvexp itself (the served pyfunc pins them; cvexp must be installed).
    serving_requirements: tuple[str, ...] = ("mlflow", "torch", "transformers", "pillow", "pandas")
    ships_cvexp_code = False
    model_file: str | None = None

    def __init__(self, model: Any, image_processor: Any, adapter: OutputAdapter, metadata: ModelMetadata,
                 device: str | torch.device = "auto") -> None:  # fmt: skip
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.adapter = adapter
        self.metadata = metadata
        self.task: Task = task_named(metadata.task)
        self.pixels = TorchPixels(image_processor, metadata.image_size)
        self.collator = BatchCollator(self.pixels, adapter)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> Predictor:
        """Loads a model artifact directory or a Lightning checkpoint written by cvexp.train (nothing in it runs code),
        or a model exported by ``cvexp.export`` (``<artifact>/model.onnx``: run by onnxruntime, :mod:`cvexp.inference.onnx`)."""
        if Path(path).suffix == ".onnx":
            from cvexp.inference.onnx import OnnxPredictor

            return OnnxPredictor.load(path, device)
        loaded: LoadedModel = load_model(path)
        return cls(loaded.model, loaded.image_processor, loaded.adapter, loaded.metadata, device)

    @property
    def label_map(self) -> LabelMap:
        return self.adapter.label_map

    @property
    def image_size(self) -> int | None:
        """The image size the model was trained at."""
        return self.metadata.image_size

    @property
    def config(self) -> dict[str, Any]:
        """The resolved training config stored with the model."""
        return self.metadata.config

    @property
    def category_names(self) -> dict[int, str]:
        """The dataset's category id -> its name."""
        return {category.id: category.name for category in self.label_map.categories}

    def response(self, prediction: Prediction, params: dict[str, Any]) -> Any:
        """One image's prediction as the served model answers it (its task's records, :meth:`cvexp.tasks.Task.response`)."""
        return self.task.response(prediction, self.category_names, params)

    def save(self, output_dir: Path) -> Path:
        """Writes the model artifact (see :mod:`cvexp.artifact`) to ``output_dir``."""
        return save_artifact(self.model, self.image_processor, self.metadata, output_dir)

    def predict_batches(self, batches: Iterable[dict[str, Any]], description: str = "predicting", progress: bool = True) -> list[PredictedSample]:
        """Runs the model over collated ``batches`` (with a progress bar unless ``progress`` is false, as in a
        model server); predictions come unthresholded, in original image coordinates, each with its target."""
        from rich.progress import track

        predictions: list[PredictedSample] = []
        total = len(batches) if hasattr(batches, "__len__") else None
        iterator = track(batches, description=description, total=total, transient=True) if progress else batches
        with torch.inference_mode():
            for batch in iterator:
                if "pixel_values" not in batch:  # every image of it unreadable (data.on_invalid=skip): nothing to predict
                    continue
                predictions += zip(self.run_model(self.model_inputs(batch), batch["targets"]), batch["targets"], strict=True)
        return predictions

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A collated batch as the model's forward takes it, on its device: normalised pixels, and the mask where the model takes one."""
        pixel_mask = batch["pixel_mask"].to(self.device)
        inputs = {"pixel_values": self.pixels.model_input(batch["pixel_values"].to(self.device), pixel_mask), "pixel_mask": pixel_mask}
        return self.adapter.model_inputs(inputs, with_labels=False)

    def run_model(self, inputs: dict[str, torch.Tensor], targets: list[Any]) -> list[Prediction]:
        """The predictions of one batch's model ``inputs`` (normalised pixels, and the mask where the model takes one)."""
        return self.adapter.format_predictions(self.model(**inputs), targets)

    def predict_dataset(self, dataset: Any, batch_size: int, num_workers: int = 0, description: str = "predicting") -> list[PredictedSample]:
        """Every sample of ``dataset`` (a dataset of :class:`~cvexp.data.targets.Sample`), batched and fed as in training."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=self.collator)
        return self.predict_batches(loader, description=description)

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int = 8, progress: bool = False) -> list[Prediction]:
        """The unthresholded predictions of HWC uint8 RGB ``images``, in their pixel coordinates."""
        from cvexp.inference.inputs import unlabelled_sample

        samples = [unlabelled_sample(image, index) for index, image in enumerate(images)]
        batches = [self.collator(samples[start : start + batch_size]) for start in range(0, len(samples), batch_size)]
        return [prediction for prediction, _ in self.predict_batches(batches, progress=progress)]
