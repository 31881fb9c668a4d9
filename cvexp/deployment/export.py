"""The ``cvexp.export`` job: a model artifact exported to ONNX, refused unless it scores what the PyTorch model scores.

The graph (:class:`ExportedGraph`) is the model and its adapter's post-processing
(:meth:`~cvexp.adapters.base.OutputAdapter.exported_outputs`: for detection, scores ranked best
first, the top-k of the sigmoid families, boxes as fractions of the image), traced by the
``torch.onnx`` exporter (``dynamo=True``) with a dynamic batch, height and width. Its input is what
the artifact's image processor makes of an image (normalised pixels; and ``pixel_mask`` for the
models that take one), so the artifact's ``preprocessor_config.json`` is its pre-processing.

The **accuracy gate** evaluates the exported graph with onnxruntime and the PyTorch model on the
same split, through the same inference path (:class:`~cvexp.inference.onnx.OnnxPredictor`), and
keeps the export only when every gated metric is within the tolerance; otherwise the file is
removed and the job fails, printing both.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

# EXPORT_INFO_FILE: what the export writes beside the graph (the opset, the inputs and outputs, how to read them, the gate's figures).
from cvexp.deployment.exported_model import EXPORT_INFO_FILE
from cvexp.errors import ConfigError, CvexpError


class ExportGateError(CvexpError):
    """The exported model does not score what the PyTorch model scores: the export is refused."""


class ExportedGraph(torch.nn.Module):
    """The model followed by its adapter's exported post-processing: the module that is traced.

    Args:
        model: the Hugging Face model (eval mode).
        adapter: its output adapter; its ``exported_outputs`` become the graph's outputs.
    """

    def __init__(self, model: torch.nn.Module, adapter: Any) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        # The adapter says which inputs the model takes (a pixel mask or not), as in every other forward pass.
        inputs = self.adapter.model_inputs({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, with_labels=False)
        return self.adapter.exported_outputs(self.model(**inputs))


def export_onnx(model: torch.nn.Module, adapter: Any, example: dict[str, torch.Tensor], path: Path, opset: int) -> Path:
    """Traces the model and its adapter's post-processing on ``example`` (a batch's model inputs, ``Predictor.model_inputs``:
    the graph's inputs are its keys) to ONNX at ``path``."""
    if not adapter.exported_output_names:
        adapter.exported_outputs(None)  # raises, naming the adapter that cannot export
    graph = ExportedGraph(model, adapter).eval()
    inputs = dict(example)
    # Batch, height and width vary (the DETR family's processor pads to the largest image of a batch): the last two axes are H, W.
    dynamic = {name: {axis: torch.export.Dim.DYNAMIC for axis in (0, tensor.dim() - 2, tensor.dim() - 1)} for name, tensor in inputs.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter's graph passes log every initializer they merge (thousands of lines) at INFO.
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    with torch.no_grad():
        torch.onnx.export(graph, (), str(path), kwargs=inputs, dynamo=True, input_names=list(inputs),
                          output_names=list(adapter.exported_output_names), dynamic_shapes=dynamic, opset_version=opset,
                          external_data=False, verbose=False)  # fmt: skip
    return path


@dataclass
class GateResult:
    """The gated metrics of the PyTorch model and of the exported one, on one split."""

    split: str
    images: int
    tolerance: float
    pytorch: dict[str, float]
    exported: dict[str, float]
    gated: list[str] = field(default_factory=list)

    @property
    def differences(self) -> dict[str, float]:
        return {name: self.exported[name] - self.pytorch[name] for name in self.gated}

    @property
    def passed(self) -> bool:
        return all(abs(difference) <= self.tolerance for difference in self.differences.values())

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"accuracy gate: {self.split} split, {self.images} images, tolerance {self.tolerance:g}", title_justify="left")
        for column in ("metric", "PyTorch", "ONNX (onnxruntime)", "difference", "within"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name in self.gated:
            difference = self.differences[name]
            table.add_row(name, f"{self.pytorch[name]:.4f}", f"{self.exported[name]:.4f}", f"{difference:+.5f}",
                          "yes" if abs(difference) <= self.tolerance else "NO")  # fmt: skip
        return table


def accuracy_gate(reference: Any, exported: Any, dataset: Any, batch_size: int, metrics: list[str], tolerance: float, split: str) -> GateResult:
    """Evaluates both predictors on ``dataset`` (the same batches, the same metric) and compares ``metrics``."""
    categories = reference.label_map.categories
    scores = {}
    for name, predictor in (("pytorch", reference), ("exported", exported)):
        predictions = predictor.predict_dataset(dataset, batch_size, description=f"gate: {name} on {split}")
        scores[name] = predictor.task.evaluate(predictions, categories)
    unknown = [metric for metric in metrics if metric not in scores["pytorch"]]
    if unknown:
        raise ConfigError(f"gate.metrics: {unknown} are not metrics of the {reference.task.name} task; it has {sorted(scores['pytorch'])}.")
    return GateResult(split, len(dataset), tolerance, scores["pytorch"], scores["exported"], list(metrics))


def run_export(cfg: DictConfig) -> GateResult:
    """Exports ``cfg.ckpt_path`` (a model artifact) to ``<artifact>/model.onnx`` and gates it; raises :class:`ExportGateError` when it fails."""
    from cvexp.evaluation.evaluator import model_split
    from cvexp.evaluation.report import print_table
    from cvexp.inference.onnx import ONNX_FILE, OnnxPredictor, onnx_session
    from cvexp.inference.predictor import Predictor

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    artifact = Path(str(cfg.ckpt_path))
    if not artifact.is_dir():
        raise ConfigError(f"ckpt_path={artifact}: export reads a model artifact directory (<run dir>/model) and writes {ONNX_FILE} into "
                          "it. Fix: point ckpt_path at the artifact (a checkpoint's run has one).")  # fmt: skip
    reference = Predictor.load(artifact, device="cpu")
    if not reference.adapter.exported_output_names:
        raise ConfigError(f"ckpt_path={artifact}: its {reference.metadata.adapter.get('_target_')} has no exportable post-processing, so "
                          f"{reference.task.name} models of this family cannot be exported yet (docs/models.md, 'Export', says why).")  # fmt: skip
    metrics = list(cfg.gate.metrics or reference.task.headline)
    dataset, data_cfg = model_split(reference, cfg.get("data"), cfg.gate.split, str(artifact))
    batch_size = int(cfg.get("batch_size") or data_cfg.get("batch_size") or 8)
    example = next(iter(torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), collate_fn=reference.collator)))
    inputs = reference.model_inputs(example)
    final = artifact / ONNX_FILE
    partial = artifact / f"{ONNX_FILE}.partial"
    export_onnx(reference.model, reference.adapter, inputs, partial, int(cfg.opset))
    exported = OnnxPredictor(onnx_session(partial), reference.image_processor, reference.adapter, reference.metadata)
    result = accuracy_gate(reference, exported, dataset, batch_size, metrics, float(cfg.gate.tolerance), cfg.gate.split)
    print_table(result.table())
    if not result.passed:
        partial.unlink(missing_ok=True)
        raise ExportGateError(f"{final}: refused by the accuracy gate: {', '.join(f'{n} {d:+.5f}' for n, d in result.differences.items())} "
                              f"against the PyTorch model on the {cfg.gate.split} split (tolerance {cfg.gate.tolerance}); nothing was written. "
                              "Fix: another opset (opset=...), or report the model family (docs/models.md, 'Export').")  # fmt: skip
    os.replace(partial, final)
    info = {"file": ONNX_FILE, "format": "onnx", "opset": int(cfg.opset), "inputs": list(inputs),
            "outputs": list(reference.adapter.exported_output_names), "exported_format": reference.adapter.exported_format, "torch": torch.__version__, "gate": {**asdict(result), "passed": True}}  # fmt: skip
    (artifact / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
    print(f"exported {final} ({final.stat().st_size / 2**20:.1f} MiB); evaluate or predict with ckpt_path={final}")
    return result
