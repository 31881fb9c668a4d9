"""``model.pretrained``: start from a hub checkpoint or a local directory, and never pretend to.

:func:`load_pretrained` loads the checkpoint with its own class (transformers resolves the hub,
shards and renamed keys), builds the model for the dataset's classes, and copies every tensor whose
name and shape match. What it could not load stops the run with :class:`PretrainedWeightsError`,
naming ``model.pretrained``, the reason and the fix:

- the name or directory cannot be found, or the hub is off (``HF_HUB_OFFLINE=1``) and no copy is
  cached: before this module existed, cvexp trained a tiny random model instead and said so only in
  a warning, while MLflow recorded the pretrained name;
- the checkpoint needs a package that is not installed (``timm``, for the DETR ResNet checkpoints);
- it holds another architecture, or tensors of the model are missing from it or have other shapes,
  outside the layers whose shape depends on the number of classes. ``model.allow_partial_load=true``
  accepts that, and the log lists what was re-initialised.

The layers that depend on the number of classes are found by building the model class on the meta
device with K and K + 1 classes and comparing shapes (no name matching per family). They are
re-initialised when the dataset's classes differ from the checkpoint's, so a head trained for other
classes never carries over; with the same classes (fine-tuning one's own model further) they load.

Where the weights came from is a :class:`WeightSource`: ``random-init``, a hub name with the
revision it resolved to, or a local directory with the SHA-256 of its weight files (and, for a
cvexp model artifact, the source it started from in turn).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvexp.errors import ConfigError, PretrainedWeightsError

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
# A cvexp model artifact names its weight source in this file (cvexp.artifact).
_ARTIFACT_METADATA = "cvexp.json"
_SHOWN = 8  # names listed in a message before "and N more"


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights started.

    Attributes:
        source: ``random-init``, a Hugging Face hub name, or an absolute directory path.
        revision: the hub commit the name resolved to.
        sha256: the SHA-256 of a local directory's weight files, in name order.
        parent: a cvexp model artifact's own weight source (what that model started from).
    """

    source: str = RANDOM_INIT
    revision: str | None = None
    sha256: str | None = None
    parent: dict[str, Any] | None = field(default=None, compare=False)

    def tag(self) -> str:
        """One line for the MLflow tag ``cvexp.weights``: ``random-init``, ``name@revision`` or ``path (sha256:...)``."""
        if self.revision:
            return f"{self.source}@{self.revision}"
        if self.sha256:
            return f"{self.source} (sha256:{self.sha256[:16]})"
        return self.source

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WeightSource:
        data = data or {}
        return cls(str(data.get("source", RANDOM_INIT)), data.get("revision"), data.get("sha256"), data.get("parent"))


@dataclass
class LoadReport:
    """What copying a checkpoint's tensors into the model did, by tensor name."""

    loaded: list[str]
    reinitialised: list[str]  # class-dependent layers, for the dataset's classes
    missing: list[str]  # in the model, not in the checkpoint
    mismatched: list[str]  # in both, with other shapes
    unexpected: list[str]  # in the checkpoint, not in the model

    @property
    def not_loaded(self) -> list[str]:
        """Tensors outside the class-dependent layers that kept their random start."""
        return self.missing + self.mismatched


@dataclass
class PretrainedModel:
    """A model for the dataset's classes with the checkpoint's weights, what loading it did, and its source."""

    model: Any
    image_processor: Any | None  # None when the checkpoint has none for this model (use the model option's)
    weights: WeightSource
    report: LoadReport


def load_pretrained(
    model_class: type,
    pretrained: str,
    label_map: Any,
    config: Any | None = None,
    allow_partial_load: bool = False,
    initializers: tuple = (),
) -> PretrainedModel:
    """Loads ``pretrained`` into a ``model_class`` for ``label_map``'s classes; raises :class:`PretrainedWeightsError` on any doubt.

    Args:
        model_class: the Hugging Face model class of the model option.
        pretrained: a hub name or a local directory (``save_pretrained`` files, e.g. a cvexp artifact).
        label_map: the dataset's classes.
        config: the model option's own config, used only for a checkpoint of another architecture
            (with ``allow_partial_load``): the model is then built from it.
        allow_partial_load: accept tensors that are missing or shaped otherwise (and another architecture).
        initializers: the model option's head initialisations, applied before the checkpoint's tensors
            are copied, so that re-initialised heads get them.
    """
    location = _location(pretrained)
    source_config = _load_config(pretrained, location)
    same_architecture = isinstance(source_config, model_class.config_class)
    if not same_architecture and not allow_partial_load:
        raise PretrainedWeightsError(
            f"model.pretrained={pretrained} holds another architecture: a '{source_config.model_type}' model "
            f"({', '.join(source_config.architectures or [type(source_config).__name__])}), but the model option builds "
            f"{model_class.__name__}. Fix: choose the model option of that family (model=...), or set "
            "model.allow_partial_load=true to start from the tensors whose names and shapes match."
        )
    source, unread = _load_source_model(model_class if same_architecture else _architecture_class(source_config, pretrained), pretrained, location)

    if same_architecture:
        target_config = copy.deepcopy(source.config)
    elif config is not None:
        target_config = copy.deepcopy(config)
    else:
        raise ConfigError(f"model.config is needed to build {model_class.__name__}: model.pretrained={pretrained} holds another "
                          "architecture, whose config cannot build this model. Set model.config (the model option's tiny config does).")  # fmt: skip
    target_config.id2label, target_config.label2id = label_map.id2label, label_map.label2id
    model = construct_model(model_class, target_config, f"model.pretrained={pretrained}")
    for initialize in initializers:
        initialize(model)
    source_names = [source.config.id2label[i] for i in sorted(source.config.id2label)]
    same_classes = source_names == [category.name for category in label_map.categories]
    # Tensors the checkpoint did not hold, transformers initialised randomly in the source model: they are not copied.
    tensors = {name: value for name, value in source.state_dict().items() if name not in unread}
    del source
    report = copy_matching_tensors(tensors, model, set() if same_classes else class_dependent_keys(model_class, target_config))

    _check_report(report, pretrained, allow_partial_load, label_map)
    # A freshly built model is in train mode already; from_pretrained's models come back in eval mode,
    # which Lightning keeps (dropout off, batch norms frozen). Say it explicitly: this model trains.
    model.train()
    return PretrainedModel(model, _load_image_processor(location) if same_architecture else None, _weight_source(pretrained, location, source_config), report)


def _location(pretrained: str) -> str:
    """A local directory as an absolute path; a hub name unchanged. A path that does not exist is an error."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PretrainedWeightsError(f"model.pretrained={pretrained}: the directory has no config.json, so it is not a saved "
                                         "Hugging Face model. Fix: point it at a save_pretrained folder or a cvexp model artifact "
                                         "(<run dir>/model).")  # fmt: skip
        return str(path.resolve())
    if path.is_absolute() or pretrained.startswith((".", "~")) or path.exists():
        raise PretrainedWeightsError(f"model.pretrained={pretrained}: no such directory. Fix: the path of a save_pretrained folder "
                                     "or a cvexp model artifact (<run dir>/model), or a Hugging Face hub name (owner/name).")  # fmt: skip
    return pretrained


def _load_config(pretrained: str, location: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    except ImportError as error:
        raise missing_package_error(f"model.pretrained={pretrained}", error) from error
    except (OSError, ValueError) as error:
        raise PretrainedWeightsError(f"model.pretrained={pretrained} cannot be loaded: {_unreachable_reason(pretrained, error)}") from error


def _unreachable_reason(pretrained: str, error: Exception) -> str:
    from huggingface_hub import constants

    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    local_fix = "or point model.pretrained at a local directory (a save_pretrained folder or a cvexp model artifact, <run dir>/model)"
    if isinstance(error, ValueError):
        return f"{first_line} Fix: a directory written by save_pretrained, {local_fix}."
    if constants.HF_HUB_OFFLINE:
        return (f"the Hugging Face hub is off (HF_HUB_OFFLINE=1, which `make` sets) and no copy of '{pretrained}' is in the local "
                f"cache ({constants.HF_HUB_CACHE}). Fix: check the name; run once with HF_HUB_OFFLINE unset to download it, {local_fix}.")  # fmt: skip
    if "couldn't connect" in first_line.lower() or "connection" in first_line.lower():
        return f"the Hugging Face hub could not be reached and no copy is cached ({first_line}). Fix: check the network, {local_fix}."
    return (f"not found on the Hugging Face hub, or private ({first_line}). Fix: check the name; for a private model log in "
            f"(`hf auth login`); {local_fix}.")  # fmt: skip


def missing_package_error(subject: str, error: ImportError) -> PretrainedWeightsError:
    """The error for a model that needs a package which is not installed (transformers' ``requires_backends``).

    ``subject`` names what needs it: ``model.pretrained=<name>`` or ``model.config``.
    """
    match = re.search(r"requires the (\S+) librar", str(error))
    package = match[1] if match else (error.name or "a package")
    return PretrainedWeightsError(
        f"{subject} needs the Python package '{package}', which is not installed"
        + (" (its config builds a timm backbone; cvexp does not install timm, which needs torchvision)" if package == "timm" else "")
        + f". Fix: install {package} where it is available, or choose a checkpoint whose config builds a Hugging Face backbone."
    )


def _architecture_class(config: Any, pretrained: str) -> type:
    """The transformers class that a checkpoint of another architecture was saved from (its config's ``architectures``)."""
    import transformers

    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    raise PretrainedWeightsError(f"model.pretrained={pretrained}: its config.json names no transformers model class "
                                 f"(architectures: {config.architectures}), so its tensors cannot be read. Fix: a checkpoint "
                                 "saved with save_pretrained by a transformers model class.")  # fmt: skip


def _load_source_model(model_class: type, pretrained: str, location: str) -> tuple[Any, set[str]]:
    """The checkpoint in its own class, and the names of the tensors it did not hold (missing, or of other shapes)."""
    try:
        model, info = model_class.from_pretrained(location, output_loading_info=True, ignore_mismatched_sizes=True)
        return model, set(info.get("missing_keys", ())) | {str(entry[0]) for entry in info.get("mismatched_keys", ())}
    except ImportError as error:
        raise missing_package_error(f"model.pretrained={pretrained}", error) from error
    except OSError as error:
        raise PretrainedWeightsError(f"model.pretrained={pretrained}: its weights cannot be read ({str(error).strip().splitlines()[0]}). "
                                     "Fix: a directory with model.safetensors as save_pretrained writes it.") from error  # fmt: skip


def construct_model(model_class: type, config: Any, subject: str) -> Any:
    """``model_class(config)`` (random weights); a missing package is a :class:`PretrainedWeightsError` naming ``subject``."""
    try:
        return model_class(config)
    except ImportError as error:
        raise missing_package_error(subject, error) from error


def class_dependent_keys(model_class: type, config: Any) -> set[str]:
    """The state-dict keys of ``model_class`` whose shape changes with the number of classes.

    Built twice on the meta device (no memory, no initialisation cost), with K and K + 1 classes.
    """
    shapes = []
    for count in (config.num_labels, config.num_labels + 1):
        variant = copy.deepcopy(config)
        variant.id2label = {index: f"LABEL_{index}" for index in range(count)}
        variant.label2id = {name: index for index, name in variant.id2label.items()}
        with torch.device("meta"):
            shapes.append({name: tuple(value.shape) for name, value in model_class(variant).state_dict().items()})
    return {name for name, shape in shapes[0].items() if shapes[1].get(name) != shape}


def copy_matching_tensors(source: dict[str, torch.Tensor], model: torch.nn.Module, reinitialise: set[str]) -> LoadReport:
    """Copies each tensor of ``source`` into ``model`` where name and shape match, except the keys in ``reinitialise``."""
    target = model.state_dict()
    report = LoadReport([], [], [], [], sorted(set(source) - set(target)))
    matched = {}
    for name, value in target.items():
        if name in reinitialise:
            report.reinitialised.append(name)
        elif name not in source:
            report.missing.append(name)
        elif tuple(source[name].shape) != tuple(value.shape):
            report.mismatched.append(f"{name} {tuple(source[name].shape)} -> {tuple(value.shape)}")
        else:
            matched[name] = source[name]
            report.loaded.append(name)
    model.load_state_dict(matched, strict=False)
    return report


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _check_report(report: LoadReport, pretrained: str, allow_partial_load: bool, label_map: Any) -> None:
    total = len(report.loaded) + len(report.reinitialised) + len(report.not_loaded)
    log.info("model.pretrained=%s: loaded %d of the model's %d tensors", pretrained, len(report.loaded), total)
    if report.reinitialised:
        log.info("re-initialised for the dataset's %d classes (%s): %s", label_map.num_labels,
                 ", ".join(c.name for c in label_map.categories), _names(report.reinitialised))  # fmt: skip
    details = "; ".join(part for part in (
        f"{len(report.missing)} missing from the checkpoint ({_names(report.missing)})" if report.missing else "",
        f"{len(report.mismatched)} of other shapes ({_names(report.mismatched)})" if report.mismatched else "",
    ) if part)  # fmt: skip
    if report.not_loaded and not allow_partial_load:
        raise PretrainedWeightsError(f"model.pretrained={pretrained} loads only in part: of the model's {total} tensors, {details}. "
                                     "Fix: a checkpoint of the same model (architecture and sizes), or set "
                                     "model.allow_partial_load=true to train with those tensors re-initialised.")  # fmt: skip
    if report.not_loaded:
        log.warning("model.allow_partial_load=true: re-initialised %s", details)
    if report.unexpected:
        log.info("not used from the checkpoint: %d tensors (%s)", len(report.unexpected), _names(report.unexpected))


def _load_image_processor(location: str) -> Any | None:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(location)
    except (OSError, ValueError):
        return None  # a checkpoint saved without its processor: the model option's is used (logged by the caller)


def _weight_source(pretrained: str, location: str, config: Any) -> WeightSource:
    path = Path(location)
    if not path.is_dir():
        return WeightSource(pretrained, revision=getattr(config, "_commit_hash", None))
    parent = None
    metadata = path / _ARTIFACT_METADATA
    if metadata.is_file():
        parent = json.loads(metadata.read_text()).get("weights")
    return WeightSource(str(path), sha256=weights_sha256(path), parent=parent)


def weights_sha256(directory: Path) -> str | None:
    """SHA-256 over the weight files of a saved model directory, in name order (None if it has none)."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["RANDOM_INIT", "LoadReport", "PretrainedModel", "WeightSource", "class_dependent_keys", "construct_model",
           "copy_matching_tensors", "load_pretrained", "missing_package_error", "weights_sha256"]  # fmt: skip
