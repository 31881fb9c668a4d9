"""Adapters: target round trips, scoring, prediction formatting, and the extensible registry."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cvexp.adapters import DetrAdapter, OutputAdapter, SigmoidDetrAdapter, available_adapters, create_adapter
from cvexp.data import Category, DetectionTarget, LabelMap

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
    with pytest.raises(KeyError, match=r"adapter.name='nope' is not registered; known adapters: \['detr', 'sigmoid_detr'"):
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
