"""pixels=torch feeds every model option exactly what its image processor (pixels=processor) would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from cvexp.data.pixels import ProcessorPixels, TorchPixels
from tests.conftest import compose_train_config, model_tasks

MODEL_OPTIONS = sorted(model_tasks())


def _images() -> list[np.ndarray]:
    """Real-looking uint8 images of different shapes, so that aspect-keeping processors pad."""
    generator = np.random.default_rng(0)
    shapes = [(60, 96), (96, 41), (77, 77)]
    return [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in shapes]


@pytest.fixture(scope="module", params=MODEL_OPTIONS)
def image_processor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(request.param)
    cfg = compose_train_config(root, root, [f"model={request.param}"])
    GlobalHydra.instance().clear()
    return instantiate(cfg.model.image_processor)


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_pixels_equal_the_image_processor(image_processor, channels_last: bool) -> None:
    images = _images()
    expected_values, expected_mask = ProcessorPixels(image_processor, 96)(images)
    pixels = TorchPixels(image_processor, 96, channels_last=channels_last)
    batched, mask = pixels(images)
    assert batched.dtype == torch.uint8 and mask.dtype == torch.bool  # a quarter and an eighth of the bytes
    values = pixels.model_input(batched, mask)
    assert values.shape == expected_values.shape and values.dtype == torch.float32
    torch.testing.assert_close(values, expected_values, rtol=0, atol=2e-6)  # float32 rounding only
    assert torch.equal(mask.long(), expected_mask.long())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert batched.is_contiguous(memory_format=layout) and values.is_contiguous(memory_format=layout)


def test_the_batch_pads_to_the_processors_pad_size() -> None:
    from transformers import ConditionalDetrImageProcessorPil

    processor = ConditionalDetrImageProcessorPil(pad_size={"height": 128, "width": 128})  # as the HF example's processor
    pixels = TorchPixels(processor, 96)
    values = pixels.model_input(*pixels(_images()))
    mask = pixels(_images())[1]
    expected_values, expected_mask = ProcessorPixels(processor, 96)(_images())
    assert values.shape == expected_values.shape == (3, 3, 128, 128)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=2e-6)
    assert torch.equal(mask.long(), expected_mask) and int(mask[1].sum()) == 96 * 41
    assert torch.all(values[1, :, :, 41:] == 0)  # padding is 0 after normalisation, as the processor pads


def test_training_config_chooses_the_pixels_and_the_layout(train_config) -> None:
    from cvexp.training import build_training

    module, datamodule = build_training(train_config(["model=conditional_detr", "pixels=processor", "pixels.channels_last=false"]))
    assert type(datamodule.collate_fn.pixels) is ProcessorPixels
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    module, datamodule = build_training(train_config(["model=conditional_detr"]))  # the defaults: torch, channels-last
    assert type(datamodule.collate_fn.pixels) is TorchPixels and datamodule.collate_fn.pixels.channels_last
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_torch_pixels_take_the_tensors_of_a_torchvision_processor() -> None:
    """Where torchvision is installed, AutoImageProcessor (model.pretrained=) loads the torchvision ("fast")
    processor, which hands back (3, H, W) tensors instead of arrays; torchvision has no CPU build here, so
    the PIL processor's arrays are handed over as the tensors it would give (found on the GPU machine)."""
    from transformers import RTDetrImageProcessorPil

    class TensorOutput(RTDetrImageProcessorPil):
        def __call__(self, *args, **kwargs):
            encoded = super().__call__(*args, **kwargs)
            encoded["pixel_values"] = [torch.from_numpy(np.ascontiguousarray(image)) for image in encoded["pixel_values"]]
            return encoded

    expected = TorchPixels(RTDetrImageProcessorPil(), 96)(_images())
    batched, mask = TorchPixels(TensorOutput(), 96)(_images())
    assert torch.equal(batched, expected[0]) and torch.equal(mask, expected[1])
