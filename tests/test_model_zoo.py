"""The model zoo: every conf/model/*.yaml names its checkpoint, builds CPU-sized, trains, and writes
COCO results that pycocotools reads back exactly and scores as cvexp does; and a model YAML kept
outside the package (docs/models.md) trains through Hydra's search path.

The options are globbed, so a model YAML added to conf/model/ is tested without touching this file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvexp.data import Category, LabelMap
from cvexp.evaluation.evaluator import dataset_image_loader, evaluation_split, write_report
from cvexp.inference.predictor import Predictor
from cvexp.paths import CONFIG_DIR
from cvexp.training import run_training
from tests.conftest import compose_train_config
from tests.test_evaluation import _assert_same_numbers, _pycocotools_eval

MODEL_DIR = CONFIG_DIR / "model"
MODELS = sorted(path.stem for path in MODEL_DIR.glob("*.yaml"))
MODELS_GUIDE = CONFIG_DIR.parent / "docs" / "models.md"
TINY_PARAMETERS = 3_000_000  # CPU-sized: the default of every model option trains on a laptop
SHAPES = LabelMap([Category(1, "circle"), Category(2, "square"), Category(3, "triangle")])
# A few steps on the synthetic shapes, as cheap as the checks allow: one epoch of debug=smoke (3
# steps, 2 validation batches, which choose the checkpoint), no MLflow, no test pass or report.
FEW_STEPS = ["debug=smoke", "trainer.max_epochs=1", "logger=none", "report=none", "test_after_fit=false"]


def test_the_zoo_is_found() -> None:
    assert {"detr", "detr_r101", "yolos", "yolos_small", "conditional_detr", "deformable_detr", "dab_detr"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_model_names_its_checkpoint_and_builds_cpu_sized(tmp_path: Path, model: str) -> None:
    # Declared in the option's own file: a variant that reused another option's defaults and left
    # hub_name to them would fine-tune the other option's checkpoint.
    declared = OmegaConf.load(MODEL_DIR / f"{model}.yaml")
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", str(declared.get("hub_name"))), f"conf/model/{model}.yaml: hub_name: <owner>/<name>"
    cfg = compose_train_config(tmp_path, tmp_path, [f"model={model}"]).model
    assert cfg.pretrained is None, "the default is the tiny model from `config`, not the checkpoint"

    detector = instantiate(cfg, label_map=SHAPES)
    assert detector.model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert detector.model.config.label2id == {"circle": 0, "square": 1, "triangle": 2}
    parameters = sum(p.numel() for p in detector.model.parameters())
    assert parameters < TINY_PARAMETERS, f"model={model}: {parameters:,} parameters in its tiny variant"


@pytest.mark.parametrize("model", MODELS)
def test_every_family_declares_its_backbone_for_learning_rates_and_freezing(tmp_path: Path, model: str) -> None:
    """The backbone comes from the model option (``backbone_modules``), never from matching parameter names."""
    from functools import partial

    from cvexp.models.detection_module import DetectionModule
    from cvexp.models.huggingface import backbone_parameter_names

    cfg = compose_train_config(tmp_path, tmp_path, [f"model={model}"])
    detector = instantiate(cfg.model, label_map=SHAPES)
    assert detector.backbone_modules, f"conf/model/{model}.yaml: backbone_modules"
    module = DetectionModule(detector.model, instantiate(cfg.adapter, label_map=SHAPES), optimizer=partial(torch.optim.AdamW, lr=1e-3), backbone_lr_scale=0.1,
                             backbone_modules=detector.backbone_modules)  # fmt: skip
    head, backbone = module.parameter_groups()
    declared = backbone_parameter_names(detector.model, detector.backbone_modules)
    names = {id(p): n for n, p in detector.model.named_parameters()}
    assert backbone["params"] and {names[id(p)] for p in backbone["params"]} == declared
    assert head["params"] and not declared & {names[id(p)] for p in head["params"]}
    assert module.configure_optimizers().param_groups[1]["lr"] == pytest.approx(1e-4)

    frozen = instantiate(compose_train_config(tmp_path, tmp_path, [f"model={model}", "model.train_backbone=false"]).model, label_map=SHAPES)
    trainable = {n for n, p in frozen.model.named_parameters() if p.requires_grad}
    assert trainable and not trainable & backbone_parameter_names(frozen.model, frozen.backbone_modules)


def test_every_model_option_has_a_row_in_the_models_table() -> None:
    rows: dict[str, list[str]] = {}  # an option has rows in several tables (supported models, the CPU benchmark)
    for line in MODELS_GUIDE.read_text().splitlines():
        if match := re.match(r"\| `(\w+)`", line):
            rows.setdefault(match[1], []).append(line)
    missing = [f"{model} ({hub_name})" for model in MODELS
               if not any(f"`{(hub_name := OmegaConf.load(MODEL_DIR / f'{model}.yaml').hub_name)}`" in row for row in rows.get(model, []))]  # fmt: skip
    assert not missing, f"docs/models.md's table lacks these options or their hub_name: {missing}"


@pytest.mark.parametrize("model", MODELS)
def test_model_trains_and_its_results_json_round_trips_through_pycocotools(train_config, shared_data_dir: Path, tmp_path: Path,
                                                                           model: str) -> None:  # fmt: skip
    summary = run_training(train_config([f"model={model}", *FEW_STEPS]))
    assert math.isfinite(summary.val_metrics["loss"]) and Path(summary.best_model_path).is_file()

    # Evaluate the checkpoint on the whole validation split as `cvexp.evaluate split=val` does:
    # rebuilt from the checkpoint, every detection, the report's coco_results.json.
    predictor = Predictor.load(summary.artifact_dir, device="cpu")
    categories = predictor.label_map.categories
    dataset = evaluation_split(predictor.config["data"], "val", categories)
    predictions = predictor.predict_dataset(dataset, batch_size=50, description=f"evaluating {model}")
    report = write_report(predictions, categories, tmp_path / "evaluation", dataset_image_loader(dataset), num_samples=0)

    # pycocotools loads the file against the split's own annotation file ...
    evaluator = _pycocotools_eval(dataset.annotation_path, report.files["results"])
    ground_truth, loaded = evaluator.cocoGt, evaluator.cocoDt
    assert sorted(loaded.getImgIds()) == sorted(ground_truth.getImgIds()) == sorted(dataset.image_ids)
    # ... with every detection the model made, as it made them: loadRes numbers results 1, 2, ...
    # in file order, and the file holds the images in prediction order.
    assert len(loaded.anns) == report.num_detections == sum(len(detection.scores) for detection, _ in predictions) > 0
    next_id = 1
    for detection, target in predictions:
        height, width = target.size
        image = ground_truth.imgs[detection.image_id]
        assert (image["height"], image["width"]) == (height, width)  # boxes are in this image's pixels
        rows = [loaded.anns[next_id + i] for i in range(len(detection.scores))]
        next_id += len(rows)
        assert detection.image_id == target.image_id and {row["image_id"] for row in rows} == {target.image_id}
        assert [row["category_id"] for row in rows] == detection.category_ids.tolist()
        assert {row["category_id"] for row in rows} <= set(ground_truth.getCatIds())
        boxes = torch.tensor([row["bbox"] for row in rows], dtype=torch.float64)
        scores = torch.tensor([row["score"] for row in rows], dtype=torch.float64)
        assert torch.allclose(boxes, detection.boxes.double(), atol=5e-4 + 1e-9, rtol=0)  # written with 3 decimals
        assert torch.allclose(scores, detection.scores.double(), atol=5e-6 + 1e-12, rtol=0)  # and 5
    # COCOeval on what it loaded gives cvexp's metrics: mAP, the other eleven numbers, per-class AP.
    _assert_same_numbers(report.metrics, evaluator, categories)


def _guide_yaml(name: str) -> str:
    """The YAML block of docs/models.md that starts with ``# <name>``, so the guide's example is what is tested."""
    blocks = re.findall(r"```yaml\n(.*?)```", MODELS_GUIDE.read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if block.startswith(f"# {name}")]
    return block


def test_the_guide_s_model_yaml_trains_from_a_config_dir_on_hydra_s_search_path(train_config, tmp_path: Path) -> None:
    """docs/models.md: a model option added with YAML only, in a config dir of one's own."""
    my_configs = tmp_path / "my_configs"
    (my_configs / "model").mkdir(parents=True)
    (my_configs / "model" / "table_transformer.yaml").write_text(_guide_yaml("my_configs/model/table_transformer.yaml"))
    assert not (MODEL_DIR / "table_transformer.yaml").exists(), "the guide's example must be a model option cvexp does not ship"

    cfg = train_config([f"hydra.searchpath=[file://{my_configs}]", "model=table_transformer", *FEW_STEPS])
    assert cfg.model.model_class == "transformers.TableTransformerForObjectDetection"
    assert cfg.adapter.name == "detr"  # the option chose its family's adapter
    summary = run_training(cfg)

    assert math.isfinite(summary.val_metrics["loss"]) and 0.0 <= summary.val_metrics["map"] <= 1.0
    # The checkpoint and the artifact hold the model's own config: each rebuilds it without the search path.
    for path in (summary.best_model_path, summary.artifact_dir):
        predictor = Predictor.load(path, device="cpu")
        assert type(predictor.model).__name__ == "TableTransformerForObjectDetection"
        assert predictor.model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
