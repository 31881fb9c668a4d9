"""What the served model answers per image, built from numpy arrays: the one definition of each task's records.

:meth:`cvexp.tasks.Task.response` (the PyTorch model's predictions) and the torch-free served export
(:mod:`cvexp.deployment.exported_model`) both build their answers here, so a model answers the same
whether PyTorch or onnxruntime runs it. This module imports numpy and pycocotools only: serving an
export must not need torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def detection_records(boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray, category_names: Mapping[int, str],
                      score_threshold: float) -> list[dict[str, Any]]:  # fmt: skip
    """The detections scoring at least ``score_threshold``, best first: ``bbox`` (absolute ``[x, y, w, h]`` in the original
    image's pixels), ``score``, ``category_id`` (the dataset's id) and ``category_name``."""
    order = ranked_above(scores, score_threshold)
    return [
        {"bbox": [float(v) for v in boxes[i]], "score": float(scores[i]), "category_id": int(category_ids[i]),
         "category_name": category_names[int(category_ids[i])]}
        for i in order
    ]  # fmt: skip


def ranked_above(scores: np.ndarray, score_threshold: float) -> list[int]:
    """The indices of ``scores`` at least ``score_threshold``, best first (ties in their order)."""
    scores = np.asarray(scores, dtype=np.float32)
    kept = np.flatnonzero(scores >= score_threshold)
    return kept[np.argsort(-scores[kept], kind="stable")].tolist()


def instance_records(boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray, masks: Sequence[dict[str, Any]],
                     category_names: Mapping[int, str], score_threshold: float) -> list[dict[str, Any]]:  # fmt: skip
    """The detection records (:func:`detection_records`), each with its mask as a COCO RLE in flat fields:
    ``rle_counts``, ``height``, ``width``."""
    records = detection_records(boxes, scores, category_ids, category_names, score_threshold)
    for record, index in zip(records, ranked_above(scores, score_threshold), strict=True):
        rle = masks[index]
        record.update({"rle_counts": rle["counts"], "height": rle["size"][0], "width": rle["size"][1]})
    return records


def classification_records(scores: np.ndarray, category_ids: np.ndarray, category_names: Mapping[int, str],
                           score_threshold: float) -> list[dict[str, Any]]:  # fmt: skip
    """The classes scoring at least ``score_threshold`` (the top one always), best first: ``category_id``,
    ``category_name``, ``score``."""
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable").tolist()
    return [
        {"category_id": int(category_ids[i]), "category_name": category_names[int(category_ids[i])], "score": float(scores[i])}
        for rank, i in enumerate(order) if rank == 0 or float(scores[i]) >= score_threshold
    ]  # fmt: skip


def mask_rles(binary: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The COCO RLEs of ``(N, H, W)`` binary masks (``counts`` as text, JSON-ready) and the ``xywh`` box around each
    (zeros for an empty one)."""
    from pycocotools import mask as coco_mask

    rles = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    boxes = coco_mask.toBbox(rles).astype(np.float32).reshape(-1, 4)
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles], boxes


def class_rles(mask: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
    """``(category id, COCO RLE)`` of each class present in ``mask`` (the RLE's ``counts`` as text, JSON-ready)."""
    from pycocotools import mask as coco_mask

    rles = []
    for category_id in np.unique(mask).tolist():
        rle = coco_mask.encode(np.asfortranarray((mask == category_id).astype(np.uint8)))
        rles.append((int(category_id), {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}))
    return rles


def segmentation_records(mask: np.ndarray, category_names: Mapping[int, str]) -> list[dict[str, Any]]:
    """One record per class present in ``mask`` (the dataset's category id per pixel): ``category_id``,
    ``category_name``, ``pixel_fraction``, and its pixels as a COCO RLE in flat fields (``rle_counts``,
    ``height``, ``width``; pycocotools' ``decode`` reads them back)."""
    total = float(mask.size)
    return [
        {"category_id": c, "category_name": category_names[c], "pixel_fraction": float((mask == c).sum()) / total,
         "rle_counts": rle["counts"], "height": rle["size"][0], "width": rle["size"][1]}
        for c, rle in class_rles(mask)
    ]  # fmt: skip
