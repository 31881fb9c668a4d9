"""COCO detection and instance-segmentation metrics with pycocotools semantics, computed by faster-coco-eval.

Wrapped in a ``torchmetrics.Metric`` so that per-process predictions are gathered for free under
distributed training. (torchmetrics' own ``MeanAveragePrecision`` needs torchvision, which has no
CPU build here.)

The per-image de-duplication that every task metric needs under DDP (the distributed sampler
repeats images so that each rank gets as many batches; each image must count once) lives here too:
:func:`process_rank`, :func:`occurrence_key`, :func:`first_occurrences`, :func:`gathered_rows` and
:func:`gathered_states`,
also used by :mod:`cvexp.evaluation.classification_metric` and :mod:`cvexp.evaluation.segmentation_metric`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import Params
from torchmetrics import Metric

from cvexp.data.labels import Category
from cvexp.data.targets import DetectionTarget

if TYPE_CHECKING:
    from cvexp.adapters.predictions import Detections

# The order of COCOeval.stats for bounding boxes.
COCO_STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
#: The same twelve numbers for instance masks (``iouType="segm"``), named apart from the box ones.
MASK_STAT_NAMES = tuple(f"mask_{name}" for name in COCO_STAT_NAMES)

IouType = Literal["bbox", "segm"]


# --- Per-image de-duplication across processes, shared by the task metrics ----------------------


def process_rank() -> int:
    """This process's rank under ``torch.distributed``; 0 when not distributed."""
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def occurrence_key(rank: int, index: int) -> float:
    """A key for the ``index``-th image that process ``rank`` fed to a metric, unique across processes.

    Stored beside each image's rows so that, after the states of all processes are concatenated,
    :func:`first_occurrences` can tell two occurrences of one image apart and keep one. A float64
    holds it exactly (below 2**53) for any realistic rank and image count.
    """
    return float(rank) * 2**32 + index


def first_occurrences(image_ids: np.ndarray, occurrences: np.ndarray) -> np.ndarray:
    """Indices of the rows that are each image's first occurrence (lowest key), in ascending image-id order.

    Under DDP the sampler pads ranks with repeated images; counting each image once, whichever of
    its identical occurrences, makes the metrics equal to a single-process run over the dataset.
    """
    if len(image_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    # Stable sort by image id, then occurrence: the first row of each run of equal ids is the one kept.
    order = np.lexsort((occurrences, image_ids))
    ids = image_ids[order]
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = ids[1:] != ids[:-1]
    return order[is_first]


def gathered_rows(state: list[torch.Tensor] | torch.Tensor, width: int) -> np.ndarray:
    """A list state of ``(n, width)`` row tensors as one numpy array (one tensor already after a distributed sync)."""
    if isinstance(state, torch.Tensor):  # after a distributed sync the list is one tensor
        return state.reshape(-1, width).cpu().numpy()
    if not state:
        return np.zeros((0, width))
    return torch.cat(state).cpu().numpy()


@contextlib.contextmanager
def gathered_states(metric: Metric) -> Iterator[None]:
    """The metric's states gathered across processes for the block, as torchmetrics does around ``compute``.

    For methods other than ``compute`` that read the states (a confusion matrix for a report): every
    process then sees the whole dataset. A no-op outside distributed runs, and inside ``compute``
    (gathered already). The local states come back afterwards, so that updates can go on.
    """
    if metric._is_synced:
        yield
        return
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn, should_sync=metric._to_sync, should_unsync=metric._should_unsync):
        yield


# --- COCO evaluation ----------------------------------------------------------------------------


def coco_ground_truth(
    targets: Sequence[DetectionTarget], categories: Sequence[Category], masks: Sequence[Sequence[Any] | None] | None = None
) -> dict[str, Any]:
    """A COCO ground-truth dict for ``targets``.

    Annotation ids are renumbered from 1: pycocotools treats a matched ground-truth id of 0 as
    "unmatched", so a dataset whose ids start at 0 would score its first box as a miss.

    Instance masks become each annotation's ``segmentation`` (what ``iouType="segm"`` reads): from
    ``masks[i]`` when given, else from ``target.masks`` where the target has one (an ``(N, H, W)``
    binary tensor, or per instance a COCO RLE or polygon list as in an annotation file). Box
    evaluation ignores them.
    """
    images, annotations = [], []
    for index, target in enumerate(targets):
        height, width = target.size
        images.append({"id": target.image_id, "height": height, "width": width, "file_name": target.file_name})
        raw = masks[index] if masks is not None else getattr(target, "masks", None)
        segmentations = (
            None if raw is None else coco_segmentations(raw, len(target.boxes), target.size, f"image {target.image_id}")
        )
        for instance, (box, category_id, iscrowd, area) in enumerate(zip(
            target.boxes.tolist(), target.category_ids.tolist(), target.iscrowd.tolist(), target.area.tolist(), strict=True
        )):  # fmt: skip
            annotation = {"id": len(annotations) + 1, "image_id": target.image_id, "bbox": box,
                          "category_id": int(category_id), "iscrowd": int(iscrowd), "area": float(area)}  # fmt: skip
            if segmentations is not None:
                annotation["segmentation"] = segmentations[instance]
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": [{"id": c.id, "name": c.name} for c in categories]}


def coco_segmentations(masks: Any, count: int, size: tuple[int, int], where: str) -> list[Any]:
    """``count`` instance masks as COCO ``segmentation`` values that a json can hold.

    Accepts an ``(N, H, W)`` binary tensor or array (encoded to compressed RLE, as pycocotools
    would decode polygons to the same pixels), or a sequence of per-instance COCO RLEs (``counts``
    compressed as str/bytes, or uncompressed as a list, as crowd annotations are) and polygon lists,
    kept as they are so that COCO evaluation converts them exactly as pycocotools does.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3 or len(masks) != count or (count and tuple(masks.shape[1:]) != tuple(size)):
            raise ValueError(f"{where}: masks of shape {masks.shape}, expected ({count}, {size[0]}, {size[1]})")
        # pycocotools encodes column-major (H, W, N) uint8 arrays.
        rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
        return [_json_rle(rle) for rle in rles]
    masks = list(masks)
    if len(masks) != count:
        raise ValueError(f"{where}: {len(masks)} masks for {count} instances")
    converted = []
    for mask in masks:
        if isinstance(mask, dict):
            converted.append(_json_rle(mask))
        elif isinstance(mask, (torch.Tensor, np.ndarray)) and np.ndim(mask) == 2:
            binary = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.uint8)
            converted.append(_json_rle(mask_utils.encode(np.asfortranarray(binary))))
        else:  # polygons: a list of flat [x1, y1, x2, y2, ...] lists
            converted.append([[float(v) for v in polygon] for polygon in mask])
            continue
        # Caught here rather than by pycocotools at the end of the epoch: RLEs must cover the image.
        if tuple(converted[-1]["size"]) != tuple(size):
            raise ValueError(f"{where}: a mask of size {converted[-1]['size']} on an image of size {list(size)} (height, width)")
    return converted


def _json_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """An RLE with json-able values: compressed counts as str (pycocotools reads str or bytes alike)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    elif not isinstance(counts, str):
        counts = [int(c) for c in counts]
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


@dataclass
class CocoEvaluation:
    """The outcome of one COCO evaluation (bbox or segm).

    Attributes:
        metrics: the twelve summary numbers and ``ap/<class name>`` (see :func:`evaluate_coco`),
            prefixed ``mask_`` for ``segm``.
        precision: COCOeval's precision array ``[IoU thresholds, recall points, categories, area
            ranges, max detections]`` (-1 where undefined); ``None`` when there were no results.
        category_ids: the category id of each index of the precision array's category axis.
        iou_thresholds, recall_thresholds: the values of the first two axes.
    """

    metrics: dict[str, float]
    precision: np.ndarray | None
    category_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def run_coco_evaluation(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]] | np.ndarray,
    categories: Sequence[Category],
    iou_type: IouType = "bbox",
) -> CocoEvaluation:
    """COCO evaluation of ``results`` against ``ground_truth``, keeping the precision array.

    ``results`` is a COCO results-json list, or (``bbox`` only) an ``(N, 7)`` array of rows
    ``[image_id, x, y, w, h, score, category_id]`` (pycocotools' numpy form, much faster to load).
    ``segm`` needs a ``segmentation`` (RLE) in every result and in every ground-truth annotation;
    its metrics are named ``mask_map`` ... ``mask_mar_large`` and ``mask_ap/<class name>``.
    As in pycocotools, a result that also has a ``bbox`` takes its area (for the small / medium /
    large ranges) from the box, not the mask.
    """
    names, prefix = (COCO_STAT_NAMES, "") if iou_type == "bbox" else (MASK_STAT_NAMES, "mask_")
    if iou_type == "segm" and isinstance(results, np.ndarray):
        raise TypeError("segm evaluation needs results with a 'segmentation' each, not the numpy row form")
    if len(results) == 0:
        metrics = {name: 0.0 for name in names}
        metrics.update({f"{prefix}ap/{c.name}": 0.0 for c in categories})
        defaults = Params(iouType=iou_type)  # COCOeval's thresholds, for callers that plot them
        return CocoEvaluation(metrics, None, [c.id for c in categories], defaults.iouThrs, defaults.recThrs)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ground_truth)
        coco_dt = _box_results(ground_truth, results) if isinstance(results, np.ndarray) else coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=lambda *_: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(names, evaluator.stats, strict=False)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
    precision = np.asarray(evaluator.eval["precision"])
    category_order = [int(c) for c in evaluator.params.catIds]
    for category in categories:
        per_class = precision[:, :, category_order.index(category.id), 0, -1]
        valid = per_class[per_class > -1]
        metrics[f"{prefix}ap/{category.name}"] = float(valid.mean()) if valid.size else -1.0
    return CocoEvaluation(
        metrics, precision, category_order, np.asarray(evaluator.params.iouThrs), np.asarray(evaluator.params.recThrs)
    )


def _box_results(ground_truth: dict[str, Any], rows: np.ndarray) -> COCO:
    """The results object ``loadRes`` makes of ``(N, 7)`` box rows, built in one pass over plain floats.

    ``loadRes`` indexes the array one numpy scalar at a time and then walks the annotations again to
    add their ids and areas (about 4 s of a 6 s evaluation of 500 000 detections); the annotations
    here hold the same values: ids 1..N in row order, ``area`` = w x h, ``iscrowd`` 0. The box
    polygon ``loadRes`` also adds as ``segmentation`` is left out: box evaluation never reads it.
    """
    missing = set(np.unique(rows[:, 0]).astype(np.int64).tolist()) - {image["id"] for image in ground_truth["images"]}
    if missing:
        raise ValueError(f"results for {len(missing)} images that are not in the ground truth (first: {min(missing)})")
    # Column by column: one list per field, no per-row lists or numpy scalars.
    columns = (rows[:, 0].astype(np.int64).tolist(), rows[:, 1:5].tolist(), rows[:, 5].tolist(), rows[:, 6].astype(np.int64).tolist(),
               (rows[:, 3] * rows[:, 4]).tolist())  # fmt: skip
    annotations = [
        {"image_id": image_id, "bbox": box, "score": score, "category_id": category_id, "area": area, "id": index, "iscrowd": 0}
        for index, (image_id, box, score, category_id, area) in enumerate(zip(*columns, strict=True), start=1)
    ]  # fmt: skip
    return COCO({"images": list(ground_truth["images"]), "categories": [dict(c) for c in ground_truth["categories"]], "annotations": annotations})


def evaluate_coco(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]] | np.ndarray,
    categories: Sequence[Category],
    iou_type: IouType = "bbox",
) -> dict[str, float]:
    """COCO metrics of ``results`` against ``ground_truth`` (see :func:`run_coco_evaluation`).

    Returns the twelve COCO summary numbers (``map``, ``map_50`` ... ``mar_large``) and ``ap/<class
    name>`` per category (-1 where the category has no ground truth, as pycocotools reports);
    for ``iou_type="segm"`` the same names prefixed ``mask_``.
    """
    return run_coco_evaluation(ground_truth, results, categories, iou_type).metrics


@dataclass
class _KeptRows:
    """The rows of each image's first occurrence (see :meth:`CocoDetectionMetric._kept_rows`)."""

    images: np.ndarray  # [image_id, height, width, occurrence], ascending image id
    target_rows: np.ndarray  # every gathered target row
    target_indices: list[np.ndarray]  # per kept image, its rows' indices into target_rows
    detection_rows: np.ndarray  # the kept detection rows (all columns)
    detection_indices: np.ndarray  # their indices into every gathered detection row


class CocoDetectionMetric(Metric):
    """Accumulates detections and ground truth over an epoch; ``compute`` returns COCO metrics.

    Args:
        categories: the dataset's categories (ids and names), for per-class AP by name.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: Sequence[Category], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = list(categories)
        # Rows: [image_id, x, y, w, h, score, category_id, occurrence] and [image_id, x, y, w, h,
        # category_id, iscrowd, area, occurrence]; images [image_id, height, width, occurrence].
        # Flat float64 tensors, which sync across processes as lists.
        self.add_state("detection_rows", default=[], dist_reduce_fx="cat")
        self.add_state("target_rows", default=[], dist_reduce_fx="cat")
        self.add_state("image_rows", default=[], dist_reduce_fx="cat")
        self._updates = 0

    def update(self, detections: Sequence[Detections], targets: Sequence[DetectionTarget]) -> None:
        # Under DDP the sampler repeats images so that every rank has as many batches: each image is
        # counted once, from its first occurrence (this process's rank and update count tell them apart).
        rank = process_rank()
        for detection, target in zip(detections, targets, strict=True):
            occurrence = occurrence_key(rank, self._updates)
            self._updates += 1
            self._update_image(detection, target, occurrence)

    def _update_image(self, detection: Detections, target: DetectionTarget, occurrence: float) -> None:
        """Records one image's detections and ground truth under its occurrence key."""
        count = len(detection.scores)
        self.detection_rows.append(torch.cat(
            [torch.full((count, 1), float(detection.image_id), dtype=torch.float64), detection.boxes.double(),
             detection.scores.double()[:, None], detection.category_ids.double()[:, None],
             torch.full((count, 1), occurrence, dtype=torch.float64)], 1
        ).to(self.device))  # fmt: skip
        count = len(target.boxes)
        self.target_rows.append(torch.cat(
            [torch.full((count, 1), float(target.image_id), dtype=torch.float64), target.boxes.double(),
             target.category_ids.double()[:, None], target.iscrowd.double()[:, None], target.area.double()[:, None],
             torch.full((count, 1), occurrence, dtype=torch.float64)], 1
        ).to(self.device))  # fmt: skip
        self.image_rows.append(
            torch.tensor([[target.image_id, *target.size, occurrence]], dtype=torch.float64, device=self.device)
        )

    def reset(self) -> None:
        super().reset()
        self._updates = 0

    def _kept_rows(self) -> _KeptRows:
        """The gathered rows of the first occurrence of every image; repeats are dropped."""
        images = gathered_rows(self.image_rows, 4)
        target_rows = gathered_rows(self.target_rows, 9)
        detection_rows = gathered_rows(self.detection_rows, 8)
        images = images[first_occurrences(images[:, 0], images[:, 3])]
        kept = np.sort(images[:, 3])
        target_indices = np.flatnonzero(np.isin(target_rows[:, 8], kept))
        per_image = [target_indices[target_rows[target_indices, 8] == occurrence] for occurrence in images[:, 3]]
        detection_indices = np.flatnonzero(np.isin(detection_rows[:, 7], kept))
        return _KeptRows(images, target_rows, per_image, detection_rows[detection_indices], detection_indices)

    @staticmethod
    def _targets(kept: _KeptRows) -> list[DetectionTarget]:
        targets = []
        for (image_id, height, width, _), indices in zip(kept.images.tolist(), kept.target_indices, strict=True):
            rows = kept.target_rows[indices]
            targets.append(DetectionTarget(
                image_id=int(image_id), boxes=torch.from_numpy(rows[:, 1:5]), category_ids=torch.from_numpy(rows[:, 5]).long(),
                iscrowd=torch.from_numpy(rows[:, 6]).long(), area=torch.from_numpy(rows[:, 7]), size=(int(height), int(width)),
            ))  # fmt: skip
        return targets

    def compute(self) -> dict[str, float]:
        kept = self._kept_rows()
        return evaluate_coco(coco_ground_truth(self._targets(kept), self.categories), kept.detection_rows[:, :7], self.categories)


class CocoInstanceSegmentationMetric(CocoDetectionMetric):
    """COCO metrics of instance masks (``iouType="segm"``) beside the box ones.

    ``compute`` returns what :class:`CocoDetectionMetric` does (``map`` ... and ``ap/<class>``, from
    the boxes) plus ``mask_map``, ``mask_map_50``, ``mask_map_75`` ... ``mask_mar_large`` and
    ``mask_ap/<class name>`` from the masks, each image counted once as there.

    Detections need ``masks`` (one COCO RLE per detection, in the original image's pixels, as
    :class:`cvexp.adapters.predictions.Detections` has them); targets need ``masks``, read with
    ``getattr(target, "masks", None)``: an ``(N, H, W)`` binary tensor, or per instance a COCO RLE
    or polygon list as in the annotation file. Crowd annotations (``iscrowd=1``, typically
    uncompressed RLEs) are matched as COCO does: a detection on a crowd region is neither a hit
    nor a false positive, its IoU being the intersection over the detection's own area.
    """

    def __init__(self, categories: Sequence[Category], **kwargs: Any) -> None:
        super().__init__(categories, **kwargs)
        # Masks are JSON (RLE with str counts, or polygons) encoded as UTF-8 bytes, because metric
        # states must be tensors to be gathered across processes. One length per detection / target
        # row says where each mask ends: appended with those rows and gathered in the same rank
        # order, they line up with detection_rows / target_rows one to one.
        self.add_state("detection_mask_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("detection_mask_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("target_mask_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("target_mask_lengths", default=[], dist_reduce_fx="cat")

    def update(self, detections: Sequence[Detections], targets: Sequence[DetectionTarget]) -> None:
        # Encode (and so check) every mask first, so that a bad batch leaves no half-recorded state.
        masks = [
            (coco_segmentations(_masks_of(detection, len(detection.scores), "detections"), len(detection.scores), target.size,
                                f"detections of image {detection.image_id}"),
             coco_segmentations(_masks_of(target, len(target.boxes), "ground truth"), len(target.boxes), target.size,
                                f"ground truth of image {target.image_id}"))
            for detection, target in zip(detections, targets, strict=True)
        ]  # fmt: skip
        rank = process_rank()
        for detection, target, (detection_masks, target_masks) in zip(detections, targets, masks, strict=True):
            occurrence = occurrence_key(rank, self._updates)
            self._updates += 1
            self._update_image(detection, target, occurrence)
            self._append_masks(detection_masks, self.detection_mask_bytes, self.detection_mask_lengths)
            self._append_masks(target_masks, self.target_mask_bytes, self.target_mask_lengths)

    def _append_masks(self, masks: list[Any], data: list[torch.Tensor], lengths: list[torch.Tensor]) -> None:
        encoded = [json.dumps(mask, separators=(",", ":")).encode() for mask in masks]
        data.append(torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()).to(self.device))
        lengths.append(torch.tensor([len(e) for e in encoded], dtype=torch.int64, device=self.device))

    def compute(self) -> dict[str, float]:
        kept = self._kept_rows()
        targets = self._targets(kept)
        target_masks = _MaskStore(self.target_mask_bytes, self.target_mask_lengths)
        detection_masks = _MaskStore(self.detection_mask_bytes, self.detection_mask_lengths)
        ground_truth = coco_ground_truth(
            targets, self.categories, masks=[target_masks.get(indices) for indices in kept.target_indices]
        )
        metrics = evaluate_coco(ground_truth, kept.detection_rows[:, :7], self.categories)
        # The results json pycocotools would read: boxes, scores and RLEs (the box gives the area, as there).
        results = [
            {
                "image_id": int(row[0]),
                "bbox": row[1:5].tolist(),
                "score": float(row[5]),
                "category_id": int(row[6]),
                "segmentation": mask,
            }
            for row, mask in zip(kept.detection_rows, detection_masks.get(kept.detection_indices), strict=True)
        ]
        metrics.update(evaluate_coco(ground_truth, results, self.categories, iou_type="segm"))
        return metrics


def _masks_of(item: Any, count: int, what: str) -> Any:
    """``item.masks``; an instance-segmentation metric cannot score instances without one."""
    masks = getattr(item, "masks", None)
    if masks is None:
        if count:
            raise ValueError(
                f"{what} of image {item.image_id} have no masks: instance segmentation metrics need one per instance"
            )
        return []
    return masks


class _MaskStore:
    """The masks of a gathered byte state, decoded on demand by row index."""

    def __init__(self, data: list[torch.Tensor] | torch.Tensor, lengths: list[torch.Tensor] | torch.Tensor) -> None:
        self.data = _flat(data).astype(np.uint8).tobytes()
        lengths = _flat(lengths).astype(np.int64)
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths

    def get(self, indices: np.ndarray) -> list[Any]:
        return [json.loads(self.data[self.starts[i] : self.ends[i]]) for i in indices.tolist()]


def _flat(state: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
    if isinstance(state, torch.Tensor):  # after a distributed sync the list is one tensor
        return state.reshape(-1).cpu().numpy()
    if not state:
        return np.zeros(0)
    return torch.cat(state).cpu().numpy()
