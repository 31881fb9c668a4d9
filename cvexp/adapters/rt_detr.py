"""Adapter for the RT-DETR family of Hugging Face detectors (RT-DETR, RT-DETRv2, D-FINE).

They score like the sigmoid DETR family (varifocal loss, no "no object" class: the top-k of
queries x classes are the detections) and train on the same labels (normalised ``(cx, cy, w, h)``,
contiguous class ids), so :class:`RtDetrAdapter` is a :class:`SigmoidDetrAdapter` that differs in
what it logs:

- ``outputs.loss_dict`` is already weighted (``weight_loss_*`` of the config) and ``outputs.loss``
  is its sum. Besides the final decoder layer's parts it holds copies per auxiliary layer
  (``_aux_0`` ... ``_aux_{L-2}``, then ``_aux_{L-1}`` for the encoder's proposals) and per
  denoising layer (``_dn_0`` ..., training only).
- D-FINE's fine-grained localisation (``loss_fgl``) and distillation (``loss_ddf``) losses exist in
  transformers only as auxiliary and denoising copies: the final layer is the distillation
  teacher, and transformers gives it no FGL term. They are logged from the last auxiliary layer
  that has them (the second-to-last decoder layer).

Training needs ``labels`` in the forward pass, which cvexp always passes: the models build their
denoising queries from them (in train mode only; in eval mode the labels only add the loss).
The models take no ``pixel_mask`` (their backbone's masks are discarded), so ``conf/adapter/rt_detr.yaml``
sets ``pass_pixel_mask: false``; their boxes are normalised to the whole input, which is why the
collator stretches every image to the input size for them rather than padding it
(:func:`cvexp.data.pixels.processor_size`).
"""

from __future__ import annotations

import re
from typing import Any

from cvexp.adapters.base import AdaptedOutput
from cvexp.adapters.detr import SigmoidDetrAdapter

_AUXILIARY_COPY = re.compile(r"^(?P<part>.+)_aux_(?P<layer>\d+)$")


class RtDetrAdapter(SigmoidDetrAdapter):
    """Sigmoid scoring, top-k over queries x classes; the already weighted loss and its parts.

    Args:
        label_map: contiguous training ids <-> the dataset's category ids.
        pass_pixel_mask: False for these models (they ignore a pixel mask).
        top_k: detections kept per image (COCO evaluation reads at most 100).
    """

    def adapt_output(self, outputs: Any) -> AdaptedOutput:
        # The final decoder layer's parts (names without an _aux_N / _dn_N suffix), as for DETR.
        adapted = super().adapt_output(outputs)
        losses, parts = outputs.loss_dict, adapted.loss_parts
        # Parts only the auxiliary layers have (D-FINE's fgl, ddf): the deepest layer that has them.
        deepest: dict[str, int] = {}
        for name in losses:
            match = _AUXILIARY_COPY.match(name)
            if match and match["part"] not in parts:
                deepest[match["part"]] = max(deepest.get(match["part"], -1), int(match["layer"]))
        for part, layer in deepest.items():
            parts[part] = losses[f"{part}_aux_{layer}"].detach()
        return adapted
