"""The model artifact: the one contract between training and everything that uses a trained model.

Every training run writes ``<run dir>/model/`` for its best checkpoint::

    config.json, model.safetensors   the Hugging Face model (save_pretrained; transformers loads it alone)
    preprocessor_config.json         its image processor, resizing as the training did
    cvexp.json                       ModelMetadata: task, adapter, categories, image size, weight
                                     source, metrics, cvexp version, the resolved training config

``evaluate``, ``predict``, ``register``, ``monitor`` and the served model rebuild the model from it
alone (:func:`load_model`): no hub, no training config re-run. A Lightning checkpoint (the format for
resuming) carries the same metadata plus the Hugging Face config and image processor in
``checkpoint["cvexp"]``, so it rebuilds the same model too.

Nothing in an artifact or checkpoint runs code: checkpoints are read with ``torch.load(weights_only=True)``,
weights from safetensors, and every class they name must be one cvexp knows: a transformers model or
image processor class, or an adapter in cvexp's registry. Anything else raises :class:`UnsafeArtifactError`.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvexp import __version__
from cvexp.data.labels import Category, LabelMap
from cvexp.errors import CvexpError, UnsafeArtifactError
from cvexp.models.pretrained import WeightSource

ARTIFACT_DIR = "model"
METADATA_FILE = "cvexp.json"
CHECKPOINT_KEY = "cvexp"
FORMAT_VERSION = 1
# The only adapter factory an artifact may name (besides the registered adapter classes themselves).
ADAPTER_FACTORY = "cvexp.adapters.create_adapter"


class ArtifactError(CvexpError):
    """A model artifact or checkpoint that cvexp cannot read; the message names the file, the field and the fix."""


@dataclass
class ModelMetadata:
    """Everything a consumer of a trained model needs besides its weights (``cvexp.json``).

    Attributes:
        task: what the model does (its adapter's ``task``, e.g. ``detection``).
        model_class: the transformers model class, ``transformers.<Name>``.
        adapter: the adapter config (``_target_`` and arguments) that reads the model's outputs.
        categories: the dataset's categories the model predicts, in training order.
        image_size: the image size the model was trained at (``data.image_size``).
        weights: where the weights started (``random-init`` or the pretrained checkpoint).
        config: the resolved training config.
        metrics: this checkpoint's metrics by split (``{"val": {...}, "test": {...}}``).
        mlflow_run_id: the training run in MLflow, when it logged there.
        cvexp_version: the cvexp version that wrote it.
    """

    task: str
    model_class: str
    adapter: dict[str, Any]
    categories: list[Category]
    image_size: int | None
    weights: WeightSource = field(default_factory=WeightSource)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    cvexp_version: str = __version__

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(list(self.categories))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "model_class": self.model_class,
            "adapter": self.adapter,
            "categories": [{"id": c.id, "name": c.name} for c in self.categories],
            "image_size": self.image_size,
            "weights": self.weights.to_dict(),
            "metrics": self.metrics,
            "mlflow_run_id": self.mlflow_run_id,
            "cvexp_version": self.cvexp_version,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str) -> ModelMetadata:
        """Reads the metadata, naming ``origin`` (a file) and the field when one is missing or malformed."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{origin}: the model metadata is not a JSON object. Fix: write the artifact with cvexp.train.")
        for key in ("task", "model_class", "adapter", "categories"):
            if key not in data:
                raise ArtifactError(f"{origin}: field '{key}' is missing. Fix: write the artifact with cvexp.train (it writes "
                                    f"{METADATA_FILE}), or from an older checkpoint with `python -m cvexp.evaluate ckpt_path=...`.")  # fmt: skip
        if not isinstance(data["adapter"], dict) or not isinstance(data["categories"], list):
            raise ArtifactError(f"{origin}: 'adapter' must be an object and 'categories' a list of {{id, name}}.")
        try:
            categories = [Category(int(c["id"]), str(c["name"])) for c in data["categories"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"{origin}: field 'categories' must list {{\"id\": int, \"name\": str}} ({error}).") from error
        return cls(
            task=str(data["task"]),
            model_class=str(data["model_class"]),
            adapter=dict(data["adapter"]),
            categories=categories,
            image_size=int(data["image_size"]) if data.get("image_size") else None,
            weights=WeightSource.from_dict(data.get("weights")),
            config=dict(data.get("config") or {}),
            metrics=dict(data.get("metrics") or {}),
            mlflow_run_id=data.get("mlflow_run_id"),
            cvexp_version=str(data.get("cvexp_version", "unknown")),
        )


@dataclass
class LoadedModel:
    """A trained model rebuilt from an artifact or checkpoint: model (eval mode, CPU), processor, adapter, metadata."""

    model: Any
    image_processor: Any
    adapter: Any
    metadata: ModelMetadata


# --- What may be named -------------------------------------------------------------------------


def model_class(name: str, origin: str) -> type:
    """The transformers model class ``name`` (``transformers.<Name>``); anything else is refused."""
    import transformers

    return _transformers_class(name, origin, "model_class", transformers.PreTrainedModel)


def image_processor_class(name: str, origin: str) -> type:
    """The transformers image processor class ``name`` (with or without the ``transformers.`` prefix)."""
    from transformers.image_processing_utils import ImageProcessingMixin

    return _transformers_class(name if name.startswith("transformers.") else f"transformers.{name}", origin, "image_processor_type",
                               ImageProcessingMixin)  # fmt: skip


def _transformers_class(name: str, origin: str, field_name: str, base: type) -> type:
    import transformers

    prefix, _, class_name = name.partition(".")
    cls = getattr(transformers, class_name, None) if prefix == "transformers" and class_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UnsafeArtifactError(f"{origin}: {field_name} '{name}' is not a transformers {base.__name__} class; cvexp builds models "
                                  f"only from those (transformers.<Name>). Refused: loading it could run code.")  # fmt: skip
    return cls


def public_model_class_name(model: Any) -> str:
    """``transformers.<Name>`` for a transformers model; the artifact can name no other class."""
    import transformers

    name = type(model).__name__
    if getattr(transformers, name, None) is not type(model):
        raise CvexpError(f"model.model_class: {type(model).__module__}.{name} is not a transformers model class, so its model artifact "
                         "could not be loaded again (artifacts name only transformers classes). Fix: use a transformers model class.")  # fmt: skip
    return f"transformers.{name}"


def build_adapter(spec: dict[str, Any], label_map: LabelMap, origin: str) -> Any:
    """The adapter an artifact names: through cvexp's registry (``create_adapter`` + a registered name, or a registered class)."""
    from cvexp.adapters import available_adapters, create_adapter

    options = {key: value for key, value in spec.items() if not key.startswith("_")}
    target = spec.get("_target_")
    registered = available_adapters()
    if target == ADAPTER_FACTORY and options.get("name") in registered:
        return create_adapter(options.pop("name"), label_map, **options)
    by_path = {f"{c.__module__}.{c.__qualname__}": c for c in registered.values()}
    if target in by_path:
        return by_path[target](label_map, **options)
    raise UnsafeArtifactError(f"{origin}: adapter._target_ '{target}' (name {options.get('name')!r}) is not an adapter in cvexp's registry "
                              f"{sorted(registered)}; refused: loading it could run code. Fix: an adapter registered with "
                              "cvexp.adapters.register_adapter or the 'cvexp.adapters' entry point group.")  # fmt: skip


def safe_instantiate(node: Any, origin: str, path: str = "", **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` for a config stored in an artifact or checkpoint: every ``_target_`` must be cvexp's own.

    A target is resolved only when its path starts with ``cvexp.`` (so nothing else is even imported)
    and must be a class or function defined in cvexp (``cvexp.data.coco.json.loads`` is refused).
    ``path`` names the node in messages (``data``).
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from cvexp.errors import instantiate

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
    _check_targets(plain, origin, path)
    return instantiate(plain, **kwargs)


def _check_targets(node: Any, origin: str, path: str) -> None:
    import inspect

    from hydra._internal.utils import _locate

    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            target = str(target)
            allowed = False
            if target.startswith("cvexp."):
                try:
                    obj = _locate(target)
                except ImportError:
                    obj = None
                allowed = (inspect.isclass(obj) or inspect.isfunction(obj)) and str(getattr(obj, "__module__", "")).startswith("cvexp.")
            if not allowed:
                raise UnsafeArtifactError(f"{origin}: {path or 'config'}._target_ '{target}' is not one of cvexp's own classes or functions; "
                                          "refused: a stored config may only build cvexp's components. Fix: pass the config "
                                          "yourself (e.g. data=<option> on the command line).")  # fmt: skip
        for key, value in node.items():
            _check_targets(value, origin, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_targets(value, origin, f"{path}.{index}")


# --- Writing ---------------------------------------------------------------------------------


def export_image_processor(image_processor: Any, image_size: int | None) -> Any:
    """A copy of the processor that resizes as the training did, so that transformers' own pipeline feeds the model the same pixels."""
    from cvexp.data.pixels import processor_size

    processor = copy.deepcopy(image_processor)
    if image_size:
        processor.size = processor_size(processor, image_size)
    return processor


def _savable_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's tensors that its transformers class holds when rebuilt from its config.

    A from-scratch model trains its backbone's batch norm (``BatchNorm2d`` in place of the frozen
    layer, ``trainable_batch_norm``): the class reloads the same statistics into its frozen layer,
    which has no ``num_batches_tracked`` counter. Computed against the class built on the meta device.
    """
    with torch.device("meta"):
        expected = set(type(model)(model.config).state_dict())
    state = model.state_dict()
    missing = expected - set(state)
    if missing:
        raise CvexpError(f"the trained {type(model).__name__} lacks {len(missing)} tensors its class has (e.g. {sorted(missing)[:3]}), "
                         "so its artifact would not load. This is a bug in cvexp: please report it.")  # fmt: skip
    return {name: value for name, value in state.items() if name in expected}


def save_artifact(model: Any, image_processor: Any, metadata: ModelMetadata, output_dir: Path) -> Path:
    """Writes the model artifact (``save_pretrained`` files + ``cvexp.json``) to ``output_dir``; returns it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, state_dict=_savable_state_dict(model))
    export_image_processor(image_processor, metadata.image_size).save_pretrained(output_dir)
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata.to_dict(), indent=2))
    return output_dir


def checkpoint_section(model: Any, image_processor: Any, metadata: ModelMetadata) -> dict[str, Any]:
    """What a Lightning checkpoint stores under ``checkpoint["cvexp"]``: plain data only (``weights_only`` loads it)."""
    # Through JSON, as save_pretrained writes them: their dicts hold enums (PIL resampling) that
    # weights_only loading refuses; JSON keeps their values.
    return {
        "format_version": FORMAT_VERSION,
        "metadata": metadata.to_dict(),
        "hf_config": json.loads(model.config.to_json_string(use_diff=False)),
        "image_processor": json.loads(export_image_processor(image_processor, metadata.image_size).to_json_string()),
    }


# --- Reading ---------------------------------------------------------------------------------


def load_model(path: str | Path) -> LoadedModel:
    """Rebuilds a trained model from a model artifact directory or a Lightning checkpoint written by cvexp.train."""
    location = Path(path)
    if location.is_dir():
        return load_artifact(location)
    if location.is_file():
        return load_checkpoint(location)
    raise ArtifactError(f"ckpt_path={path}: no such file or directory. Fix: a model artifact (<run dir>/model) or a checkpoint "
                        "(<run dir>/checkpoints/*.ckpt) written by cvexp.train.")  # fmt: skip


def load_artifact(directory: Path, weights: bool = True) -> LoadedModel:
    """Reads ``<directory>/cvexp.json`` and the Hugging Face files beside it (safetensors only).

    ``weights=False`` leaves the PyTorch model out (``model`` is ``None``): what an exported model
    (``model.onnx`` beside them) needs to be fed and read.
    """
    metadata_path = directory / METADATA_FILE
    if not metadata_path.is_file():
        raise ArtifactError(f"{directory}: no {METADATA_FILE}, so it is not a cvexp model artifact. Fix: the <run dir>/model "
                            "directory of a cvexp.train run, or a checkpoint (.ckpt) it wrote.")  # fmt: skip
    try:
        data = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{metadata_path}: malformed JSON at line {error.lineno}: {error.msg}.") from error
    origin = str(metadata_path)
    metadata = ModelMetadata.from_dict(data, origin)
    cls = model_class(metadata.model_class, origin)
    processor_path = directory / "preprocessor_config.json"
    if not processor_path.is_file():
        raise ArtifactError(f"{directory}: no preprocessor_config.json (the image processor). Fix: write the artifact with cvexp.train.")
    processor_cls = image_processor_class(str(json.loads(processor_path.read_text()).get("image_processor_type")), str(processor_path))
    adapter = build_adapter(metadata.adapter, metadata.label_map, origin)  # refuse an unsafe artifact before loading weights
    if not weights:
        return LoadedModel(None, processor_cls.from_pretrained(directory), adapter, metadata)
    if not any(directory.glob("*.safetensors")):
        raise ArtifactError(f"{directory}: no .safetensors weights (cvexp reads no pickled weights). Fix: write the artifact with "
                            "cvexp.train, or save the model with save_pretrained(safe_serialization=True).")  # fmt: skip
    model, info = cls.from_pretrained(directory, use_safetensors=True, output_loading_info=True)
    problems = {key: sorted(map(str, values)) for key, values in info.items() if key != "error_msgs" and values}
    if problems:
        raise ArtifactError(f"{directory}: the weights do not match config.json ({problems}). Fix: write the artifact with cvexp.train.")
    return LoadedModel(model.eval(), processor_cls.from_pretrained(directory), adapter, metadata)


def load_checkpoint(path: Path) -> LoadedModel:
    """Reads a Lightning checkpoint written by cvexp.train without unpickling code, and rebuilds its model.

    The model comes from the Hugging Face config stored in the checkpoint: the training run's
    ``model.pretrained`` is never loaded again.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names what it refused on a line of its own ("... unsupported GLOBAL posix.system whose module posix is blocked").
        refused = re.search(r"unsupported\s+global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(error), flags=re.IGNORECASE)
        what = f"it asks for {refused[1]}" if refused else str(error).splitlines()[0]
        raise UnsafeArtifactError(f"ckpt_path={path}: the checkpoint holds objects other than tensors and plain data, which cvexp "
                                  f"refuses to unpickle because that could run code ({what}). Fix: a checkpoint written by "
                                  "cvexp.train, or its model artifact (<run dir>/model).") from error  # fmt: skip
    except (RuntimeError, EOFError, OSError) as error:
        raise ArtifactError(f"ckpt_path={path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]}).") from error
    section = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(section, dict) or "metadata" not in section:
        raise ArtifactError(f"ckpt_path={path}: the checkpoint has no '{CHECKPOINT_KEY}' section with the model's metadata, so it was not "
                            "written by this version of cvexp.train. Fix: a checkpoint from a cvexp.train run "
                            "(<run dir>/checkpoints/*.ckpt) or its model artifact (<run dir>/model).")  # fmt: skip
    origin = f"{path} ({CHECKPOINT_KEY} section)"
    metadata = ModelMetadata.from_dict(section["metadata"], origin)
    cls = model_class(metadata.model_class, origin)
    processor_dict = dict(section.get("image_processor") or {})
    processor_cls = image_processor_class(str(processor_dict.get("image_processor_type")), origin)
    adapter = build_adapter(metadata.adapter, metadata.label_map, origin)
    model = cls(cls.config_class.from_dict(section["hf_config"]))
    # The LightningModule holds the Hugging Face model as ``self.model``: its weights are "model.*".
    prefix = "model."
    state = {name[len(prefix):]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    expected = model.state_dict()
    # See _savable_state_dict: batch norms trained in place of frozen ones carry a counter the class lacks.
    state = {name: value for name, value in state.items() if name in expected or not name.endswith("num_batches_tracked")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"ckpt_path={path}: its weights do not fit the model its metadata describes ({str(error).splitlines()[0]}).") from error
    return LoadedModel(model.eval(), processor_cls.from_dict(processor_dict), adapter, metadata)


__all__ = ["ARTIFACT_DIR", "METADATA_FILE", "ArtifactError", "LoadedModel", "ModelMetadata", "build_adapter", "checkpoint_section",
           "image_processor_class", "load_artifact", "load_checkpoint", "load_model", "model_class", "public_model_class_name",
           "safe_instantiate", "save_artifact"]  # fmt: skip
