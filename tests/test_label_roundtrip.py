"""Label counts and names survive save / load: config, model, converter, remote code, processor, pipeline.

transformers 5 leaves ``id2label`` out of ``config.json`` when it equals a bare config's (two generic
``LABEL_i`` names); the UNet-FCN config defaults to 6 labels, so such a model must still write them.
Expected names below come from the definition (``LABEL_i`` for i < n, or the names given).
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from _isolated import run_without_pannuke_hf
from test_convert_mmseg import mmseg_shapes, random_state_dict, reference_forward
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from pannuke_hf import constants
from pannuke_hf.commands.convert_mmseg import main as convert_main
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation, UNetFCNImageProcessor


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**fields) -> UNetFCNConfig:
    return UNetFCNConfig(base_channels=4, head_channels=4, auxiliary_channels=4, num_stages=3, **fields)


def generic(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"num_labels": 1}, generic(1)),
        ({"num_labels": 2}, generic(2)),
        ({"num_labels": 3}, generic(3)),
        ({"id2label": generic(6)}, generic(6)),
        ({"id2label": {0: "background", 1: "nucleus"}}, {0: "background", 1: "nucleus"}),
        ({"label2id": {"tumour": 1, "other": 0}}, {0: "other", 1: "tumour"}),
        ({}, constants.ID2LABEL),
    ],
    ids=["1-generic", "2-generic", "3-generic", "6-generic", "2-named", "2-from-label2id", "pannuke"],
)
def test_config_round_trip_keeps_count_and_names(tmp_path, fields, expected):
    tiny(**fields).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {str(i): name for i, name in expected.items()}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, UNetFCNConfig)
    assert loaded.num_labels == len(expected)
    assert loaded.id2label == expected
    assert loaded.label2id == {name: i for i, name in expected.items()}


def test_two_label_model_round_trips_through_the_auto_class(tmp_path):
    torch.manual_seed(0)
    model = UNetFCNForSemanticSegmentation(tiny(num_labels=2, use_auxiliary_head=True)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.num_labels == 2 and loaded.decode_head.classifier.out_channels == 2
    pixel_values = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    # Fine-tuning to another label count stays possible.
    retargeted = AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path, num_labels=4, ignore_mismatched_sizes=True
    )
    assert retargeted.config.id2label == generic(4)
    assert retargeted.decode_head.classifier.out_channels == 4


@pytest.fixture(scope="module")
def converted_two_class(tmp_path_factory):
    """A 2-class reference-style checkpoint with an auxiliary head, converted with the CLI (no label names)."""
    folder = tmp_path_factory.mktemp("two_class")
    state = random_state_dict(mmseg_shapes(base=4, classes=2, head_channels=8, auxiliary=True), seed=5)
    torch.save({"state_dict": state, "meta": {"iter": 100}}, folder / "model.pth")
    assert convert_main([str(folder / "model.pth"), str(folder / "hf"), "--image-size", "32"]) == 0
    return folder / "hf", state


def test_converted_two_class_checkpoint_reloads(converted_two_class):
    path, state = converted_two_class
    config = AutoConfig.from_pretrained(path)
    assert config.num_labels == 2 and config.id2label == generic(2) and config.use_auxiliary_head
    model = AutoModelForSemanticSegmentation.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    assert isinstance(processor, UNetFCNImageProcessor)
    assert (processor.size.height, processor.size.width) == (32, 32)
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, reference_forward(state, pixel_values), rtol=1e-4, atol=1e-4
        )


def test_converted_checkpoint_keeps_names_from_its_metadata(tmp_path):
    state = random_state_dict(mmseg_shapes(base=4, classes=2, head_channels=8), seed=6)
    meta = {"dataset_meta": {"classes": ["stroma", "nucleus"]}}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "model.pth")
    assert convert_main([str(tmp_path / "model.pth"), str(tmp_path / "hf")]) == 0
    assert AutoConfig.from_pretrained(tmp_path / "hf").id2label == {0: "stroma", 1: "nucleus"}


def _pipeline_expectation(model, processor, image) -> list[int]:
    """Labels present in processor -> model -> logits resized to the image -> argmax (the definition)."""
    with torch.no_grad():
        logits = model(processor(image, return_tensors="pt")["pixel_values"]).logits
    logits = torch.nn.functional.interpolate(
        logits, size=image.size[::-1], mode="bilinear", align_corners=False
    )
    return sorted(int(v) for v in logits.argmax(1).unique())


def test_pipeline_names_two_labels(tmp_path):
    torch.manual_seed(1)
    model = UNetFCNForSemanticSegmentation(tiny(id2label={0: "background", 1: "nucleus"})).eval()
    torch.nn.init.normal_(model.decode_head.classifier.weight, std=2.0)
    model.save_pretrained(tmp_path)
    processor = UNetFCNImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8))
    results = pipeline("image-segmentation", model=str(tmp_path))(image, subtask="semantic")
    present = _pipeline_expectation(model, processor, image)
    assert present == [0, 1]
    assert [r["label"] for r in results] == ["background", "nucleus"]


@pytest.mark.slow  # a fresh interpreter importing torch + transformers + pipeline: 20-45 s here
def test_two_class_checkpoint_loads_with_remote_code_alone(converted_two_class, tmp_path):
    """Model, processor and pipeline from the converted folder, where ``pannuke_hf`` is not importable."""
    path, state = converted_two_class
    pixel_values = torch.randn(1, 3, 32, 32)
    torch.save(
        {"x": pixel_values, "logits": reference_forward(state, pixel_values)}, tmp_path / "expected.pt"
    )
    script = textwrap.dedent(
        f"""
        import numpy as np, PIL.Image, torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
        path = {str(path)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForSemanticSegmentation.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(model(expected["x"]).logits, expected["logits"], rtol=1e-4, atol=1e-4)
        image = PIL.Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8))
        segmenter = pipeline("image-segmentation", model=path, trust_remote_code=True)
        labels = [r["label"] for r in segmenter(image, subtask="semantic")]
        assert set(labels) <= {{"LABEL_0", "LABEL_1"}} and labels, labels
        print("CONFIG", config.num_labels, sorted(config.id2label.items()))
        print("MODEL", model.decode_head.classifier.out_channels, model.auxiliary_head.classifier.out_channels)
        print("PROCESSOR", tuple(processor(image, return_tensors="pt")["pixel_values"].shape))
        """
    )
    result = run_without_pannuke_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CONFIG 2 [(0, 'LABEL_0'), (1, 'LABEL_1')]" in result.stdout
    assert "MODEL 2 2" in result.stdout
    assert "PROCESSOR (1, 3, 32, 32)" in result.stdout
