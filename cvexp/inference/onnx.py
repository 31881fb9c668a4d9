"""Models exported by ``cvexp.export`` (``<artifact>/model.onnx``), run by onnxruntime.

:class:`OnnxPredictor` is a :class:`~cvexp.inference.predictor.Predictor` whose model is an
onnxruntime session: images are fed exactly as to the PyTorch model (the artifact's image
processor, :class:`~cvexp.data.pixels.TorchPixels`), and the graph's outputs are read by the
adapter's :meth:`~cvexp.adapters.base.OutputAdapter.format_exported`, the same code that reads the
PyTorch model's post-processed outputs. So ``cvexp.evaluate``, ``cvexp.predict`` and the accuracy
gate of ``cvexp.export`` run an exported model through the one inference path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cvexp.adapters.base import Prediction
from cvexp.artifact import ArtifactError, load_artifact
from cvexp.inference.predictor import Predictor

#: The exported graph's file, in the model artifact beside the Hugging Face files.
ONNX_FILE = "model.onnx"


def onnx_session(path: Path, device: str | torch.device = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime session of ``path``: CUDA where asked for and available, else the CPU; ``threads`` intra-op threads (``None``: torch's count)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    wants_cuda = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
    providers = ["CUDAExecutionProvider"] if wants_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers() else []
    return onnxruntime.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])


class OnnxPredictor(Predictor):
    """An exported model (``model.onnx`` in a model artifact), run by onnxruntime through the one inference path.

    Args:
        session: the onnxruntime session of the graph.
        image_processor, adapter, metadata: those of the artifact the graph was exported from.
    """

    def __init__(self, session: Any, image_processor: Any, adapter: Any, metadata: Any, model_file: str | None = ONNX_FILE) -> None:
        super().__init__(torch.nn.Identity(), image_processor, adapter, metadata, device="cpu")
        self.model_file = model_file
        self.session = session
        self.input_names = [node.name for node in session.get_inputs()]
        self.output_names = [node.name for node in session.get_outputs()]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> OnnxPredictor:
        """The graph at ``path`` (``<artifact>/model.onnx``) with the artifact's image processor and adapter (no PyTorch weights read)."""
        location = Path(path)
        if not location.is_file():
            raise ArtifactError(f"ckpt_path={path}: no such file. Fix: export the model first (python -m cvexp.export "
                                "ckpt_path=<run dir>/model), then point at <run dir>/model/model.onnx.")  # fmt: skip
        loaded = load_artifact(location.parent, weights=False)
        return cls(onnx_session(location, device), loaded.image_processor, loaded.adapter, loaded.metadata, location.name)

    def run_model(self, inputs: dict[str, torch.Tensor], targets: list[Any]) -> list[Prediction]:
        feed = {name: inputs[name].cpu().numpy() for name in self.input_names}
        return self.adapter.format_exported(self.session.run(self.output_names, feed), targets)
