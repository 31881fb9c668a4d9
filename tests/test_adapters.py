"""Adapters: target round trips, scoring, prediction formatting, and the extensible registry."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from cvexp.adapters import DetrAdapter, OutputAdapter, SigmoidDetrAdapter, available_adapters, create_adapter
from cvexp.data import BatchCollator, Category, DetectionTarget, LabelMap, Sample
from cvexp.data.pixels import TorchPixels, processor_size

# Non-contiguous dataset ids, as real exports have them.
LABEL_MAP = LabelMap([Category(3, "cat"), Category(7, "dog"), Category(11, "bird")])


def target(boxes: list[list[float]], category_ids: list[int], size: tuple[int, int] = (100, 200), image_id: int = 5) -> DetectionTarget:
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return DetectionTarget(image_id=image_id, boxes=tensor, category_ids=torch.tensor(category_ids), iscrowd=torch.zeros(len(category_ids), dtype=torch.int64),
                           area=tensor[:, 2] * tensor[:, 3], size=size)  # fmt: skip


@pytest.mark.parametrize("adapter_class", [DetrAdapter, SigmoidDetrAdapter])
def test_targets_round_trip(adapter_class: type[OutputAdapter]) -> None:
    adapter = adapter_class(LABEL_MAP)
    original = [target([[10, 20, 30, 40], [0, 0, 200, 100]], [7, 11]), target([], [], size=(50, 50), image_id=6)]
    labels = adapter.adapt_targets(original)
    assert labels[0]["class_labels"].tolist() == [1, 2]  # contiguous inside the model
    assert torch.allclose(labels[0]["boxes"][0], torch.tensor([25 / 200, 40 / 100, 30 / 200, 40 / 100]))
    back = adapter.format_targets(labels, original)
    for before, after in zip(original, back, strict=True):
        assert after.category_ids.tolist() == before.category_ids.tolist()  # the dataset's ids at the edge
        assert torch.allclose(after.boxes, before.boxes, atol=1e-4)


def _outputs(logits: list[list[float]], boxes: list[list[float]]) -> SimpleNamespace:
    return SimpleNamespace(logits=torch.tensor([logits]), pred_boxes=torch.tensor([boxes]))


def test_detr_scores_by_softmax_without_the_no_object_class_and_keeps_every_query() -> None:
    adapter = DetrAdapter(LABEL_MAP)
    # Query 0: confident "dog"; query 1: mostly no-object (last logit), still reported.
    outputs = _outputs([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 1.0, 6.0]], [[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1]])
    (detections,) = adapter.format_predictions(outputs, [target([], [], size=(100, 200))])
    assert len(detections.scores) == 2  # no score threshold
    assert detections.category_ids.tolist() == [7, 11]
    expected = torch.softmax(torch.tensor([0.0, 5.0, 0.0, 0.0]), -1)[1]
    assert detections.scores[0] == pytest.approx(float(expected), rel=1e-5)
    # Original image coordinates, COCO xywh: cx=0.5*200, w=0.2*200 -> x = 80.
    assert detections.boxes[0].tolist() == pytest.approx([80.0, 30.0, 40.0, 40.0])
    assert detections.image_id == 5


def test_sigmoid_family_takes_top_k_over_queries_and_classes() -> None:
    adapter = SigmoidDetrAdapter(LABEL_MAP, top_k=4)
    outputs = _outputs([[4.0, 3.0, -9.0], [-9.0, -9.0, 2.0]], [[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1]])
    (detections,) = adapter.format_predictions(outputs, [target([], [], size=(100, 200))])
    # One query may yield several detections of different classes.
    assert detections.category_ids.tolist()[:3] == [3, 7, 11]
    assert detections.scores.tolist() == sorted(detections.scores.tolist(), reverse=True)
    assert detections.boxes[0].tolist() == pytest.approx(detections.boxes[1].tolist())
    assert len(detections.scores) == 4


def test_detections_round_trip_through_coco_results_json(tmp_path: Path) -> None:
    import json

    from faster_coco_eval import COCO

    adapter = SigmoidDetrAdapter(LABEL_MAP, top_k=5)
    outputs = _outputs([[4.0, 3.0, -9.0], [-9.0, -9.0, 2.0]], [[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1]])
    (detections,) = adapter.format_predictions(outputs, [target([], [], size=(100, 200))])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(detections.to_coco_results()))
    gt = COCO({"images": [{"id": 5, "width": 200, "height": 100}], "annotations": [], "categories": [{"id": c.id, "name": c.name} for c in LABEL_MAP.categories]})
    loaded = gt.loadRes(str(path))
    assert len(loaded.anns) == 5
    assert {a["category_id"] for a in loaded.anns.values()} <= {3, 7, 11}


def test_yolos_adapter_config_passes_no_pixel_mask() -> None:
    adapter = create_adapter("detr", LABEL_MAP, pass_pixel_mask=False)
    batch = {"pixel_values": torch.zeros(1, 3, 8, 8), "pixel_mask": torch.ones(1, 8, 8), "labels": []}
    assert set(adapter.model_inputs(batch)) == {"pixel_values", "labels"}
    assert set(DetrAdapter(LABEL_MAP).model_inputs(batch, with_labels=False)) == {"pixel_values", "pixel_mask"}


def test_unknown_adapter_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"adapter.name='nope' is not registered; known adapters: \['detr', 'detr_segmentation', 'image_classification', 'mask_classification', 'rt_detr', 'semantic_segmentation', 'sigmoid_detr'"):
        create_adapter("nope", LABEL_MAP)


def test_installed_packages_extend_the_registry_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed distribution: a module plus dist-info with an entry point, on sys.path.
    (tmp_path / "my_detectors.py").write_text(
        "from cvexp.adapters import DetrAdapter\n\nclass MyFamilyAdapter(DetrAdapter):\n    pass\n"
    )
    dist_info = tmp_path / "my_detectors-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-detectors\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[cvexp.adapters]\nmy_family = my_detectors:MyFamilyAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "my_family" in available_adapters()
        adapter = create_adapter("my_family", LABEL_MAP)
        assert type(adapter).__name__ == "MyFamilyAdapter"
    finally:
        from cvexp.adapters import registry

        registry._REGISTRY.pop("my_family", None)
        sys.modules.pop("my_detectors", None)


# --- The RT-DETR family (RT-DETR, RT-DETRv2, D-FINE): real tiny models from their YAML ---

RT_DETR_FAMILY = ["rt_detr", "rt_detr_v2", "d_fine", "deimv2"]
FINAL_LAYER_PARTS = {"loss_vfl", "loss_bbox", "loss_giou"}
# The families' own final-layer parts: D-FINE's localisation losses (for the layers before the last, their teacher);
# DEIMv2's matching-aware loss in place of the varifocal one, with D-FINE's.
OWN_PARTS = {"d_fine": FINAL_LAYER_PARTS | {"loss_fgl", "loss_ddf"}, "deimv2": {"loss_mal", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf"}}


def _model_and_adapter(option: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, OutputAdapter]:
    """(model option, BuiltModel, adapter) built from conf/model/<option>.yaml with random weights."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    root = tmp_path_factory.mktemp(option)
    cfg = compose_train_config(root, root, [f"model={option}"])
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    return option, instantiate(cfg.model, label_map=LABEL_MAP), instantiate(cfg.adapter, label_map=LABEL_MAP)


@pytest.fixture(scope="module", params=RT_DETR_FAMILY)
def rt_detr_family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, OutputAdapter]:
    return _model_and_adapter(request.param, tmp_path_factory)


def _samples() -> list[Sample]:
    """Two images of different shapes and aspect ratios, with boxes of every class."""
    generator = np.random.default_rng(0)
    return [
        Sample(generator.integers(0, 256, (60, 120, 3), dtype=np.uint8), target([[10, 5, 30, 20], [70, 30, 40, 25]], [3, 11], size=(60, 120), image_id=1)),
        Sample(generator.integers(0, 256, (96, 80, 3), dtype=np.uint8), target([[8, 8, 20, 40]], [7], size=(96, 80), image_id=2)),
    ]  # fmt: skip


def test_fixed_shape_processors_stretch_to_the_image_size_others_keep_the_aspect_ratio() -> None:
    from transformers import DetrImageProcessorPil, RTDetrImageProcessorPil

    assert processor_size(RTDetrImageProcessorPil(), 96) == {"height": 96, "width": 96}
    assert processor_size(DetrImageProcessorPil(), 96) == {"shortest_edge": 96, "longest_edge": 96}
    assert processor_size(SimpleNamespace(size={"height": 640, "width": 640}), 96) == {"height": 96, "width": 96}  # a saved, reloaded size


def _model_batch(image_processor: Any, adapter: OutputAdapter, samples: list[Sample]) -> dict[str, Any]:
    """A collated batch of ``samples`` whose pixels are the model's input, as the training module makes them."""
    pixels = TorchPixels(image_processor, 96)
    batch = BatchCollator(pixels, adapter)(samples)
    batch["pixel_values"] = pixels.model_input(batch["pixel_values"], batch["pixel_mask"])
    return batch


def test_rt_detr_family_predictions_are_in_original_image_coordinates(rt_detr_family: tuple[str, Any, OutputAdapter]) -> None:
    _, detector, adapter = rt_detr_family
    samples = _samples()
    targets = [s.target for s in samples]
    batch = _model_batch(detector.image_processor, adapter, samples)
    # Every image fills the whole input (stretched, unpadded), in [0, 1] without mean/std.
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    assert 0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
    assert "pixel_mask" not in adapter.model_inputs(batch)  # the models ignore one
    model = detector.model.eval()
    with torch.no_grad():
        outputs = model(**adapter.model_inputs(batch, with_labels=False))
    detections = adapter.format_predictions(outputs, targets)
    # transformers' own post-processing for these models: the top num_queries of queries x classes,
    # corner boxes scaled by the original image size.
    reference = detector.image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[t.size for t in targets])
    num_queries = model.config.num_queries
    for detection, expected, sample in zip(detections, reference, samples, strict=True):
        assert detection.image_id == sample.target.image_id
        assert len(detection.scores) == min(adapter.top_k, num_queries * len(LABEL_MAP.categories))
        assert set(detection.category_ids.tolist()) <= {3, 7, 11}  # the dataset's ids
        top = slice(0, num_queries)
        assert torch.allclose(detection.scores[top], expected["scores"], atol=1e-6)
        assert detection.category_ids[top].tolist() == LABEL_MAP.to_category_ids(expected["labels"]).tolist()
        x0, y0, x1, y1 = expected["boxes"].unbind(-1)
        assert torch.allclose(detection.boxes[top], torch.stack([x0, y0, x1 - x0, y1 - y0], -1), atol=1e-4)


def test_rt_detr_family_loss_is_the_model_s_and_parts_are_the_final_layer_s(rt_detr_family: tuple[str, Any, OutputAdapter]) -> None:
    option, detector, adapter = rt_detr_family
    batch = _model_batch(detector.image_processor, adapter, _samples())
    model = detector.model.train()
    outputs = model(**adapter.model_inputs(batch))
    adapted = adapter.adapt_output(outputs)
    # transformers weights the parts already; the loss is their sum (final, auxiliary, denoising copies).
    assert adapted.loss is outputs.loss and adapted.loss.requires_grad
    assert torch.allclose(adapted.loss, sum(outputs.loss_dict.values()))
    expected = OWN_PARTS.get(option, FINAL_LAYER_PARTS)
    assert set(adapted.loss_parts) == expected
    for name in expected & FINAL_LAYER_PARTS | {"loss_mal"} & expected:
        assert torch.equal(adapted.loss_parts[name], outputs.loss_dict[name].detach())
    deepest = model.config.decoder_layers - 2  # aux_0 .. aux_{L-2}: the decoder layers before the last
    for name in expected & {"loss_fgl", "loss_ddf"}:
        assert torch.equal(adapted.loss_parts[name], outputs.loss_dict[f"{name}_aux_{deepest}"].detach())
    assert not any(part.requires_grad for part in adapted.loss_parts.values())


def test_rt_detr_family_trains_on_denoising_queries_built_from_the_labels(rt_detr_family: tuple[str, Any, OutputAdapter]) -> None:
    from functools import partial

    from cvexp.models.task_module import VisionTaskModule

    _, detector, adapter = rt_detr_family
    batch = _model_batch(detector.image_processor, adapter, _samples())
    module = VisionTaskModule(detector.model, adapter, optimizer=partial(torch.optim.AdamW, lr=1e-4))
    num_queries = detector.model.config.num_queries
    module.train()
    outputs = module(batch)  # as training_step calls it
    assert outputs.denoising_meta_values is not None  # the labels reached the model...
    assert outputs.logits.shape[1] > num_queries  # ...and became extra (denoising) queries
    assert any(name.endswith("_dn_0") for name in outputs.loss_dict)
    module.eval()
    with torch.no_grad():
        outputs = module(batch)  # as validation_step calls it: the labels give val/loss only
    assert outputs.denoising_meta_values is None and outputs.logits.shape[1] == num_queries
    assert outputs.loss is not None and not any("_dn_" in name for name in outputs.loss_dict)


# --- The padded families (DETR, Conditional, Deformable, DAB-DETR, YOLOS): real tiny models from their YAML ---


def _model_options() -> list[str]:
    """The detection options of conf/model/: the ones these box adapters serve."""
    from tests.conftest import model_tasks

    return sorted(model for model, task in model_tasks().items() if task == "detection")


def _padded_options() -> list[str]:
    """The model options whose image processor keeps the aspect ratio, so that a batch is padded."""
    import tempfile

    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    options = []
    with tempfile.TemporaryDirectory() as root:
        for option in _model_options():
            cfg = compose_train_config(Path(root), Path(root), [f"model={option}"])
            GlobalHydra.instance().clear()
            if set(processor_size(instantiate(cfg.model.image_processor), 96)) == {"shortest_edge", "longest_edge"}:
                options.append(option)
    return options


PADDED_FAMILY = _padded_options()


# The windowed-ViT detectors (RF-DETR, LW-DETR): sigmoid top-k scoring like the padded sigmoid family, on a fixed square input.
WINDOWED_VIT_FAMILY = ["rf_detr", "lw_detr"]


def test_every_model_option_is_either_padded_or_stretched() -> None:
    # The discovery must neither come up empty nor miss an option: together with the RT-DETR family and the
    # windowed ViTs (stretched, tested above and below) the padded options are every detection model in conf/model/.
    assert {"detr", "conditional_detr", "deformable_detr", "dab_detr", "yolos"} <= set(PADDED_FAMILY)
    assert not set(PADDED_FAMILY) & {*RT_DETR_FAMILY, *WINDOWED_VIT_FAMILY}
    assert set(PADDED_FAMILY) | set(RT_DETR_FAMILY) | set(WINDOWED_VIT_FAMILY) == set(_model_options())


@pytest.mark.parametrize("option", WINDOWED_VIT_FAMILY)
def test_windowed_vit_predictions_match_transformers_post_processing(option: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Non-square images stretched to the square input the windows need; the adapter's top-k detections are
    transformers' ``post_process_object_detection`` ones, in each image's own pixels."""
    _, detector, adapter = _model_and_adapter(option, tmp_path_factory)
    assert isinstance(adapter, SigmoidDetrAdapter)
    samples = _padded_samples()
    targets = [s.target for s in samples]
    batch = _model_batch(detector.image_processor, adapter, samples)
    assert batch["pixel_values"].shape == (3, 3, 96, 96) and bool(batch["pixel_mask"].all())  # stretched, never padded
    model = detector.model.eval()
    with torch.no_grad():
        outputs = model(**adapter.model_inputs(batch, with_labels=False))
    assert outputs.logits.shape[1] == model.config.num_queries  # one query group at inference
    sizes = [t.size for t in targets]
    for model_outputs in (outputs, _spread(outputs)):
        for case_adapter in (adapter, SigmoidDetrAdapter(LABEL_MAP, adapter.pass_pixel_mask, top_k=7)):
            reference = detector.image_processor.post_process_object_detection(model_outputs, threshold=0.0, target_sizes=sizes, top_k=case_adapter.top_k)
            for detection, expected in zip(case_adapter.format_predictions(model_outputs, targets), reference, strict=True):
                assert len(detection.scores) == min(case_adapter.top_k, model.config.num_queries * len(LABEL_MAP.categories))
                _assert_same_detections(detection, expected)


@pytest.fixture(scope="module", params=PADDED_FAMILY)
def padded_family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, OutputAdapter]:
    return _model_and_adapter(request.param, tmp_path_factory)


def _padded_samples() -> list[Sample]:
    """Three images of clearly different non-square shapes and aspect ratios (wide, tall, wide again)."""
    generator = np.random.default_rng(1)
    shapes = [(60, 120), (96, 80), (50, 70)]
    return [Sample(generator.integers(0, 256, (height, width, 3), dtype=np.uint8), target([], [], size=(height, width), image_id=10 + i))
            for i, (height, width) in enumerate(shapes)]  # fmt: skip


def _spread(outputs: Any) -> Any:
    """The model's outputs with queries made distinct.

    A tiny model from random weights gives every query nearly (YOLOS: exactly) the same scores and
    a centred box of about 0.5 x 0.5, so a comparison on its outputs alone would miss a permutation of
    the queries or swapped box sides. The post-processing sees the same output type, with random
    logits and boxes of every shape added on.
    """
    generator = torch.Generator().manual_seed(0)
    logits = outputs.logits + 2 * torch.randn(outputs.logits.shape, generator=generator)
    pred_boxes = (outputs.pred_boxes.logit() + torch.randn(outputs.pred_boxes.shape, generator=generator)).sigmoid()
    return type(outputs)(**{**outputs, "logits": logits, "pred_boxes": pred_boxes})


def _assert_same_detections(detection: Any, expected: dict[str, torch.Tensor]) -> None:
    """cvexp's Detections (best first, xywh, dataset ids) == transformers' result (corner boxes, contiguous labels), as matched sets."""
    x0, y0, x1, y1 = expected["boxes"].unbind(-1)
    expected_boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], -1)
    expected_ids = LABEL_MAP.to_category_ids(expected["labels"])
    assert len(detection.scores) == len(expected["scores"]) == len(detection.category_ids) == len(detection.boxes)
    assert torch.all(detection.scores[:-1] >= detection.scores[1:])  # cvexp reports the best first
    # transformers keeps the query order (softmax family) or the top-k order (sigmoid family), cvexp
    # sorts by score: compare the sorted scores, then pair every detection, best first, with the best
    # still unpaired one of transformers' of the same score, class and box (scores may tie).
    order = expected["scores"].argsort(descending=True, stable=True)
    assert torch.allclose(detection.scores, expected["scores"][order], atol=1e-6)
    unpaired = order.tolist()
    for score, category_id, box in zip(detection.scores, detection.category_ids, detection.boxes, strict=True):
        pair = next((j for j in unpaired if abs(float(score - expected["scores"][j])) <= 1e-6 and int(category_id) == int(expected_ids[j])
                     and torch.allclose(box, expected_boxes[j], atol=1e-4)), None)  # fmt: skip
        assert pair is not None, f"transformers has no detection of score {float(score)}, category {int(category_id)}, box {box.tolist()}"
        unpaired.remove(pair)


def test_padded_family_predictions_match_transformers_post_processing(padded_family: tuple[str, Any, OutputAdapter]) -> None:
    import inspect

    option, detector, adapter = padded_family
    samples = _padded_samples()
    targets = [s.target for s in samples]
    batch = _model_batch(detector.image_processor, adapter, samples)
    # Aspect kept, longer side 96, then padded to the batch's largest: every image here is padded.
    assert batch["pixel_values"].shape == (3, 3, 96, 96)
    assert (batch["pixel_mask"] == 0).flatten(1).any(1).all(), "every image should have padding"
    assert all(t.size != (96, 96) for t in targets)  # original sizes, not the input's
    model = detector.model.eval()
    with torch.no_grad():
        outputs = model(**adapter.model_inputs(batch, with_labels=False))
    post_process = detector.image_processor.post_process_object_detection
    sizes = [t.size for t in targets]  # (height, width), as both expect
    num_queries, num_classes = outputs.logits.shape[1], len(LABEL_MAP.categories)
    for model_outputs in (outputs, _spread(outputs)):
        if isinstance(adapter, SigmoidDetrAdapter):
            assert "top_k" in inspect.signature(post_process).parameters
            assert outputs.logits.shape[-1] == num_classes  # no no-object class
            # Also a top_k below queries x classes (20 x 3 here), so that the top-k really selects.
            adapters = [adapter, SigmoidDetrAdapter(LABEL_MAP, adapter.pass_pixel_mask, top_k=7)]
            cases = [(a, post_process(model_outputs, threshold=0.0, target_sizes=sizes, top_k=a.top_k), min(a.top_k, num_queries * num_classes))
                     for a in adapters]  # fmt: skip
        else:
            assert type(adapter) is DetrAdapter and outputs.logits.shape[-1] == num_classes + 1  # the no-object class last
            # At threshold 0 transformers keeps every query (softmax scores are > 0), as cvexp does.
            cases = [(adapter, post_process(model_outputs, threshold=0.0, target_sizes=sizes), num_queries)]
        for case_adapter, reference, expected_count in cases:
            detections = case_adapter.format_predictions(model_outputs, targets)
            for detection, expected, sample in zip(detections, reference, samples, strict=True):
                assert detection.image_id == sample.target.image_id
                assert len(detection.scores) == expected_count, option
                assert set(detection.category_ids.tolist()) <= {3, 7, 11}  # the dataset's ids
                _assert_same_detections(detection, expected)


def _instance_target(size: tuple[int, int] = (40, 80), crowd: bool = False) -> DetectionTarget:
    """Two instances of a 40 x 80 image: a 10 x 20 block ("dog") and a 20 x 40 one ("bird", optionally a crowd region)."""
    masks = torch.zeros((2, *size), dtype=torch.bool)
    masks[0, 0:10, 0:20] = True
    masks[1, 20:40, 40:80] = True
    instance = target([[0, 0, 20, 10], [40, 20, 40, 20]], [7, 11], size=size)
    instance.iscrowd = torch.tensor([0, int(crowd)])
    instance.masks = masks
    return instance


def test_mask_classification_targets_are_masks_at_the_input_size_without_crowds() -> None:
    from cvexp.adapters import MaskClassificationAdapter

    adapter = MaskClassificationAdapter(LABEL_MAP)
    pixel_mask = torch.zeros((2, 24, 48), dtype=torch.long)
    pixel_mask[0, :, :] = 1  # the first image fills the input; the second its top-left 12 x 24 (padded)
    pixel_mask[1, :12, :24] = 1
    labels = adapter.adapt_targets([_instance_target(), _instance_target(crowd=True)], pixel_mask)
    assert [m.shape for m in labels["mask_labels"]] == [(2, 24, 48), (1, 24, 48)]  # the crowd region is not trained on
    assert [c.tolist() for c in labels["class_labels"]] == [[1, 2], [1]]  # contiguous
    assert labels["mask_labels"][0][0].sum() == 6 * 12 and labels["mask_labels"][0][1, 12:, 24:].all()  # scaled by 0.6
    assert labels["mask_labels"][1][0, :3, :6].all() and labels["mask_labels"][1][0].sum() == 3 * 6  # scaled by 0.3, padding 0
    inputs = adapter.model_inputs({"pixel_values": torch.zeros(2, 3, 24, 48), "pixel_mask": pixel_mask, "labels": labels})
    assert set(inputs) == {"pixel_values", "pixel_mask", "mask_labels", "class_labels"}
    with pytest.raises(ValueError, match="with_masks=true"):
        adapter.adapt_targets([target([[0, 0, 1, 1]], [7], size=(40, 80))], pixel_mask[:1])


def test_mask_classification_predictions_are_rle_masks_at_the_image_size_scored_by_class_and_mask() -> None:
    from pycocotools import mask as coco_mask

    from cvexp.adapters import MaskClassificationAdapter

    adapter = MaskClassificationAdapter(LABEL_MAP, top_k=3)
    class_logits = torch.tensor([[[0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 0.0, 8.0]]])  # query 0: "dog"; query 1: no object
    mask_logits = torch.full((1, 2, 10, 20), -5.0)
    mask_logits[0, 0, :5, :5] = 5.0  # query 0: the top-left quarter of the height, a quarter of the width
    outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    (detections,) = adapter.format_predictions(outputs, [target([], [], size=(40, 80))])
    assert len(detections.scores) == len(detections.masks) == 3 and detections.category_ids[0] == 7
    best = coco_mask.decode({**detections.masks[0], "counts": detections.masks[0]["counts"].encode()})
    assert best.shape == (40, 80) and best[:18, :18].all() and not best[22:, :].any() and not best[:, 22:].any()
    x, y, w, h = detections.boxes[0].tolist()
    assert (x, y) == (0, 0) and 18 <= w <= 22 and 18 <= h <= 22  # the box around the mask
    dog = float(torch.softmax(class_logits[0, 0], -1)[1])
    assert dog * 0.95 < float(detections.scores[0]) < dog  # class probability x the mask's mean probability (~0.99)
    assert (detections.scores[:-1] >= detections.scores[1:]).all()


def test_detr_segmentation_adds_masks_to_detr_labels_and_predictions() -> None:
    from pycocotools import mask as coco_mask

    from cvexp.adapters import DetrSegmentationAdapter

    adapter = DetrSegmentationAdapter(LABEL_MAP)
    labels = adapter.adapt_targets([_instance_target(crowd=True)], torch.ones((1, 20, 40), dtype=torch.long))
    assert labels[0]["class_labels"].tolist() == [1] and labels[0]["masks"].shape == (1, 20, 40) and labels[0]["masks"].sum() == 5 * 10
    logits = torch.tensor([[[0.0, 0.0, 0.0, 6.0], [0.0, 6.0, 0.0, 0.0]]])  # query 1 is the confident one
    pred_masks = torch.full((1, 2, 10, 20), -5.0)
    pred_masks[0, 1, 5:, 10:] = 5.0
    outputs = SimpleNamespace(logits=logits, pred_boxes=torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.75, 0.75, 0.5, 0.5]]]), pred_masks=pred_masks)
    (detections,) = adapter.format_predictions(outputs, [target([], [], size=(40, 80))])
    assert detections.category_ids.tolist()[0] == 7 and detections.boxes[0].tolist() == pytest.approx([40.0, 20.0, 40.0, 20.0])
    best = coco_mask.decode({**detections.masks[0], "counts": detections.masks[0]["counts"].encode()})
    assert best[22:, 42:].all() and not best[:18].any()  # the confident query's mask, at the image's size
