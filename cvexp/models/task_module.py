"""The one LightningModule that trains and evaluates every Hugging Face vision model, of every task."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torchmetrics import Metric

from cvexp.adapters.base import OutputAdapter, Prediction
from cvexp.artifact import CHECKPOINT_KEY, ModelMetadata, checkpoint_section
from cvexp.data.pixels import ProcessorPixels
from cvexp.engines.resume import RANDOM_STATE_KEY, THREADS_KEY, random_states, restore_random_states
from cvexp.models.huggingface import backbone_parameter_names
from cvexp.tasks import Task, task_named

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]

log = logging.getLogger(__name__)


class VisionTaskModule(L.LightningModule):
    """Trains a model through its adapter and scores it with its task's metric, for every task.

    Logged names: ``train/loss_step``, ``train/loss_epoch`` and ``train/<loss part>``; ``val/loss`` and
    the task's metrics per validation epoch (detection: ``val/map``, ``val/map_50`` ... ``val/ap/<class
    name>``; classification: ``val/accuracy``, ``val/macro_f1`` ...; semantic segmentation:
    ``val/miou`` ...), ``test/`` likewise.

    Args:
        model: a Hugging Face vision model.
        adapter: the model family's output adapter (it speaks the task's targets and predictions).
        task: the task (:mod:`cvexp.tasks`) or its name; default: the one the adapter speaks.
        optimizer: partial optimizer, called with the parameter groups.
        scheduler: partial LR scheduler, called with the optimizer (and ``num_training_steps`` when
            it takes that argument); stepped every optimizer step.
        backbone_lr_scale: learning-rate factor for the parameters of ``backbone_modules`` (DETR
            practice when fine-tuning a pretrained backbone).
        backbone_modules: the model's backbone by attribute path, as its model option declares it.
        image_processor: the model's image processor, stored in checkpoints with ``metadata``.
        metadata: what the model artifact records (categories, adapter, weight source, training
            config); checkpoints store it so that they rebuild the model alone (:mod:`cvexp.artifact`).
        channels_last: lay the model's 4-d weights out channels-last (NHWC), the layout in which CPU
            convolutions and pooling run fastest; the ``pixels`` option gives the images the same one.
        pixels: what batched the images (:mod:`cvexp.data.pixels`); :meth:`forward` has it make the
            model's input of a batch, on the model's device.
        compile: compile the model's forward with ``torch.compile`` (in place: the weights keep their names).
        decay_norms_and_biases: ``False`` exempts biases and normalisation weights (every parameter of at most
            one dimension) from weight decay, as the RT-DETR, D-FINE, DEIM and RF-DETR recipes train.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        adapter: OutputAdapter,
        optimizer: OptimizerFactory,
        task: Task | str | None = None,
        scheduler: SchedulerFactory | None = None,
        backbone_lr_scale: float = 1.0,
        backbone_modules: tuple[str, ...] = (),
        image_processor: Any | None = None,
        metadata: ModelMetadata | None = None,
        channels_last: bool = False,
        pixels: ProcessorPixels | None = None,
        compile: bool = False,
        decay_norms_and_biases: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        if compile:
            self.model.compile()
        self.adapter = adapter
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone_lr_scale = backbone_lr_scale
        self.backbone_modules = tuple(backbone_modules)
        self.decay_norms_and_biases = decay_norms_and_biases
        self.image_processor = image_processor
        self.metadata = metadata
        self.pixels = pixels
        self.task = task_named(task or adapter.task) if not isinstance(task, Task) else task
        categories = adapter.label_map.categories
        self.val_metric: Metric = self.task.metric(categories)
        self.test_metric: Metric = self.task.metric(categories)
        # The last test run's predictions and targets, for the evaluation report after training.
        self.test_predictions: list[tuple[Prediction, Any]] = []
        self._validated_epoch: int | None = None
        # Images that could not be read at training time and were skipped (path -> why), in this process.
        self.unreadable_images: dict[str, str] = {}
        self._pending_random_state: dict[str, Any] | None = None

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> dict[str, Any]:
        # Only what the model reads moves; the original targets stay on the CPU, where the metrics
        # read them. (Lightning's generic walk over every target costs ~2 % of a CPU step.)
        if device.type == "cpu" or "pixel_values" not in batch:
            return batch
        moved = dict(batch)
        for key in ("pixel_values", "pixel_mask", "labels"):
            moved[key] = move_data_to_device(batch[key], device)
        return moved

    def forward(self, batch: dict[str, Any]) -> Any:
        if self.pixels is not None:  # the batch's pixels as they left the DataLoader, now on the model's device
            batch = {**batch, "pixel_values": self.pixels.model_input(batch["pixel_values"], batch["pixel_mask"])}
        return self.model(**self.adapter.model_inputs(batch, with_labels=batch.get("labels") is not None))

    def _readable(self, batch: dict[str, Any]) -> bool:
        """Notes the images of ``batch`` that could not be read (``data.on_invalid=skip``); False when nothing else is left."""
        for image in batch.get("unreadable", ()):
            if image.path not in self.unreadable_images:
                log.warning("skipped an image that cannot be read (data.on_invalid=skip): %s (%s)", image.path, image.reason)
                self.unreadable_images[image.path] = image.reason
        return "pixel_values" in batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._readable(batch):
            return None  # Lightning skips the optimizer step
        adapted = self.adapter.adapt_output(self(batch))
        batch_size = len(batch["targets"])
        self.log("train/loss", adapted.loss, prog_bar=True, on_epoch=True, batch_size=batch_size)
        # The logger writes every log_every_n_steps steps only (Lightning's own rule); recording
        # the parts on the other steps would cost ~1.5 % of a small CPU step for nothing.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{name}": value for name, value in adapted.loss_parts.items()}, batch_size=batch_size)
        return adapted.loss

    def _evaluation_step(self, batch: dict[str, Any], stage: str, metric: Metric) -> None:
        if not self._readable(batch):
            return
        outputs = self(batch)
        self.log(f"{stage}/loss", self.adapter.adapt_output(outputs).loss, batch_size=len(batch["targets"]), sync_dist=True)
        predictions = self.adapter.format_predictions(outputs, batch["targets"])
        metric.update(predictions, batch["targets"])
        if metric is self.test_metric:
            self.test_predictions += zip(predictions, batch["targets"], strict=True)

    def _log_metric(self, stage: str, metric: Metric) -> None:
        values = metric.compute()
        metric.reset()
        if self.trainer.sanity_checking:
            return
        if stage == "val":
            self._validated_epoch = self.current_epoch
        # A line per evaluation, for logs read without the progress bar (files, CI).
        log.info("%s epoch %d: %s", stage, self.current_epoch, self.task.log_line(values))
        # compute() already gathered every process's predictions: the values agree, no sync needed.
        headline = self.task.headline[0]
        self.log(f"{stage}/{headline}", values.pop(headline), prog_bar=True)
        self.log_dict({f"{stage}/{name}": value for name, value in values.items()})

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val", self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test", self.test_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters: the rest of the model first (``head``), then the backbone (``backbone_modules``) if it
        trains; each split into a ``*_no_decay`` group (``weight_decay`` 0) of its biases and normalisation weights
        unless ``decay_norms_and_biases``. Empty groups are left out."""
        in_backbone = backbone_parameter_names(self.model, self.backbone_modules)
        groups: dict[str, list[torch.nn.Parameter]] = {"head": [], "head_no_decay": [], "backbone": [], "backbone_no_decay": []}
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                # timm's rule: a bias or a 1-d weight (the scale of a LayerNorm, BatchNorm, RMSNorm, GroupNorm) is exempt.
                exempt = not self.decay_norms_and_biases and (parameter.ndim <= 1 or name.endswith(".bias"))
                groups[("backbone" if name in in_backbone else "head") + ("_no_decay" if exempt else "")].append(parameter)
        return [{"params": params, "name": name, **({"weight_decay": 0.0} if name.endswith("_no_decay") else {})}
                for name, params in groups.items() if params]  # fmt: skip

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            if group["name"].startswith("backbone"):
                group["lr"] *= self.backbone_lr_scale
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "num_training_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["num_training_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_random_state is not None:
            # Resumed: the generators as they were after the checkpoint's step, set just before the
            # next one (dataloader set-up and the sanity check in between have drawn from them).
            restore_random_states(self._pending_random_state)
            self._pending_random_state = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_random_state = checkpoint.get(RANDOM_STATE_KEY)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the next step draws, and the thread count its sums depend on: a resume repeats it (cvexp/engines/resume.py).
        checkpoint[RANDOM_STATE_KEY] = random_states()
        # The adaptive thread policy (cvexp/engines/cpu_threads.py) has put in its ceiling, not the count of the moment.
        checkpoint.setdefault(THREADS_KEY, torch.get_num_threads())
        # Enough to rebuild the model (evaluate, register, serve) with neither the config files nor
        # model.pretrained: the metadata, the Hugging Face config and the image processor.
        if self.metadata is None or self.image_processor is None:
            return
        metadata = copy.copy(self.metadata)
        # The last validation's metrics: this checkpoint's own for the best ones, which are saved right after it.
        val = {name[len("val/"):]: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/")}
        metadata.metrics = {"val": {**val, "epoch": self._validated_epoch}} if val and self._validated_epoch is not None else {}
        checkpoint[CHECKPOINT_KEY] = checkpoint_section(self.model, self.image_processor, metadata)
