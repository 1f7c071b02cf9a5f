"""mmseg -> transformers conversion: every entry mapped, strict loading, logits of an independent reference.

The reference forward below is written from the architecture facts (pannuke-facts section 4) with
plain ``torch.nn.functional`` ops over the mmseg key names; it shares no code with the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSemanticSegmentation

from pannuke_hf import constants
from pannuke_hf.commands.convert_mmseg import main as convert_main
from pannuke_hf.models.unet_fcn import UNetFCNForSemanticSegmentation, UNetFCNImageProcessor
from pannuke_hf.models.unet_fcn.convert_mmseg_unet_fcn_to_hf import (
    ConversionError,
    convert_mmseg_state_dict,
    load_mmseg_checkpoint,
    rename_key,
)

REFERENCE_TSV = Path(__file__).with_name("mmseg_fcn-unet-s5-d16_6cls_state_dict.tsv")
BN_EPS = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# mmseg-named state dicts and an independent functional forward
# ------------------------------------------------------------------------------------------


def mmseg_shapes(
    base: int = 64,
    stages: int = 5,
    classes: int = 6,
    convs: int = 2,
    head_convs: int = 1,
    head_channels: int = 64,
    auxiliary: bool = False,
    in_channels: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an mmseg UNet + FCN head state dict, from the naming of the reference library."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_module(prefix, cin, cout, kernel):
        shapes[f"{prefix}.conv.weight"] = (cout, cin, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{name}"] = (cout,)
        shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    channels = [base * 2**i for i in range(stages)]
    for i in range(stages):
        position = 0 if i == 0 else 1  # Sequential(block) or Sequential(MaxPool2d, block)
        for j in range(convs):
            cin = (in_channels if i == 0 else channels[i - 1]) if j == 0 else channels[i]
            conv_module(f"backbone.encoder.{i}.{position}.convs.{j}", cin, channels[i], 3)
    for i in range(stages - 1):
        for j in range(convs):
            conv_module(
                f"backbone.decoder.{i}.conv_block.convs.{j}",
                2 * channels[i] if j == 0 else channels[i],
                channels[i],
                3,
            )
        conv_module(f"backbone.decoder.{i}.upsample.interp_upsample.1", channels[i + 1], channels[i], 1)
    heads = [("decode_head", channels[0])] + ([("auxiliary_head", channels[1])] if auxiliary else [])
    for head, cin in heads:
        shapes[f"{head}.conv_seg.weight"] = (classes, head_channels, 1, 1)
        shapes[f"{head}.conv_seg.bias"] = (classes,)
        for j in range(head_convs):
            conv_module(f"{head}.convs.{j}", cin if j == 0 else head_channels, head_channels, 3)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values that keep activations near unit scale through the whole network."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 20000, shape, generator=generator, dtype=torch.int64)
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def _conv_module(state, prefix, x, padding):
    x = F.conv2d(x, state[f"{prefix}.conv.weight"], padding=padding)
    x = F.batch_norm(
        x,
        state[f"{prefix}.bn.running_mean"],
        state[f"{prefix}.bn.running_var"],
        state[f"{prefix}.bn.weight"],
        state[f"{prefix}.bn.bias"],
        False,
        0.0,
        BN_EPS,
    )
    return F.relu(x)


def _conv_block(state, prefix, x):
    j = 0
    while f"{prefix}.convs.{j}.conv.weight" in state:
        x = _conv_module(state, f"{prefix}.convs.{j}", x, padding=1)
        j += 1
    return x


def reference_forward(state, x, head="decode_head", in_index=-1):
    """Eval-mode logits of the mmseg UNet + FCN head with the weights ``state`` (mmseg names)."""
    stages = len({k.split(".")[2] for k in state if k.startswith("backbone.encoder.")})
    skips = []
    for i in range(stages):
        if i > 0:
            x = F.max_pool2d(x, kernel_size=2)
        x = _conv_block(state, f"backbone.encoder.{i}.{0 if i == 0 else 1}", x)
        skips.append(x)
    outputs = [x]
    for i in reversed(range(stages - 1)):
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        up = _conv_module(state, f"backbone.decoder.{i}.upsample.interp_upsample.1", up, padding=0)
        x = _conv_block(state, f"backbone.decoder.{i}.conv_block", torch.cat([skips[i], up], dim=1))
        outputs.append(x)
    features = _conv_block(state, head, outputs[in_index])
    return F.conv2d(features, state[f"{head}.conv_seg.weight"], state[f"{head}.conv_seg.bias"])


# ------------------------------------------------------------------------------------------
# The reference checkpoint layout
# ------------------------------------------------------------------------------------------


def read_reference_tsv() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in REFERENCE_TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        shapes[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
        assert dtype == ("int64" if key.endswith("num_batches_tracked") else "float32")
    return shapes


def test_the_generator_reproduces_the_reference_layout():
    reference = read_reference_tsv()
    assert len(reference) == 140
    assert mmseg_shapes() == reference


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """A checkpoint with exactly the keys and shapes of the reference (random values), as mmengine saves it."""
    state = random_state_dict(read_reference_tsv())
    path = tmp_path_factory.mktemp("mmseg") / "fcn_unet_s5-d16_pannuke.pth"
    meta = {"dataset_meta": {"classes": ["background", "neoplastic", "x", "y", "z", "w"]}, "iter": 20000}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}}}, path)
    return path, state


def test_convert_the_reference_checkpoint(reference_checkpoint, tmp_path, capsys):
    path, state = reference_checkpoint
    assert convert_main([str(path), str(tmp_path / "hf"), "--num-labels", "auto"]) == 0
    out = capsys.readouterr().out
    assert "28,986,950 parameters" in out
    # the summary names the classes as every file for people does (label 5 is non-neoplastic)
    assert (
        "(background, neoplastic, inflammatory, connective / soft tissue, dead, non-neoplastic epithelial)"
        in out
    )
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_unet_fcn.py",
        "configuration_unet_fcn.py",
    }
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    assert type(model) is UNetFCNForSemanticSegmentation
    # The reference project's names for labels 2-5 are wrong: the package's names are used.
    assert model.config.id2label == constants.ID2LABEL
    assert not model.config.use_auxiliary_head
    converted = model.state_dict()
    assert len(converted) == len(state) == 140
    for key, value in state.items():
        new = converted[rename_key(key)]
        assert new.dtype == value.dtype, key
        torch.testing.assert_close(new, value, rtol=0, atol=0, msg=key)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(pixel_values).logits
    expected = reference_forward(state, pixel_values)
    assert expected.abs().max() > 0.1  # a meaningful comparison, not of near-zero maps
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    processor = UNetFCNImageProcessor.from_pretrained(tmp_path / "hf")
    assert tuple(processor.image_mean) == constants.IMAGE_MEAN


def test_auxiliary_head_and_other_class_counts(tmp_path):
    state = random_state_dict(mmseg_shapes(base=4, classes=3, head_channels=8, auxiliary=True), seed=2)
    torch.save(state, tmp_path / "raw.pth")  # a bare state dict this time
    assert convert_main([str(tmp_path / "raw.pth"), str(tmp_path / "hf")]) == 0
    model = UNetFCNForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    config = model.config
    assert config.use_auxiliary_head and config.auxiliary_in_index == -2 and config.auxiliary_channels == 8
    assert (config.num_labels, config.base_channels, config.head_channels) == (3, 4, 8)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, reference_forward(state, pixel_values), rtol=1e-4, atol=1e-4
        )
        features = model.unet.backbone_features(pixel_values)
        torch.testing.assert_close(
            model.auxiliary_head(features[-2]),
            reference_forward(state, pixel_values, head="auxiliary_head", in_index=-2),
            rtol=1e-4,
            atol=1e-4,
        )
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[rename_key(key)], value, rtol=0, atol=0)


def test_architecture_variants_are_read_from_the_keys(tmp_path):
    shapes = mmseg_shapes(base=4, stages=4, classes=2, convs=3, head_convs=2, head_channels=6)
    state = random_state_dict(shapes, seed=3)
    meta = {"dataset_meta": {"classes": ("tissue", "nucleus")}}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "variant.pth")
    state_dict, loaded_meta = load_mmseg_checkpoint(tmp_path / "variant.pth")
    model = convert_mmseg_state_dict(state_dict, meta=loaded_meta)
    config = model.config
    assert (config.num_stages, config.encoder_num_convs, config.decoder_num_convs) == (4, [3] * 4, [3] * 3)
    assert (config.head_num_convs, config.head_channels) == (2, 6)
    assert config.id2label == {0: "tissue", 1: "nucleus"}
    pixel_values = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, reference_forward(state, pixel_values), rtol=1e-4, atol=1e-4
        )


class FakeHistoryBuffer:
    """Stands for an mmengine object in a checkpoint's metadata; must never be rebuilt on loading."""

    rebuilt: list = []

    def __init__(self):
        self.values = [1.0, 2.0]

    def __setstate__(self, state):
        FakeHistoryBuffer.rebuilt.append(state)


def test_metadata_objects_are_not_executed(tmp_path):
    state = random_state_dict(mmseg_shapes(base=4, classes=2, head_channels=4))
    torch.save({"state_dict": state, "message_hub": {"log": FakeHistoryBuffer()}}, tmp_path / "hub.pth")
    loaded, _ = load_mmseg_checkpoint(tmp_path / "hub.pth")
    assert FakeHistoryBuffer.rebuilt == []
    assert loaded.keys() == state.keys()
    convert_mmseg_state_dict(loaded)


# ------------------------------------------------------------------------------------------
# Wrong and truncated checkpoints
# ------------------------------------------------------------------------------------------


def tiny_state() -> dict[str, torch.Tensor]:
    return random_state_dict(mmseg_shapes(base=4, classes=3, head_channels=4), seed=4)


def test_missing_key_is_named():
    state = tiny_state()
    del state["decode_head.convs.0.bn.running_var"]
    with pytest.raises(
        ConversionError, match=r"1 model weights are missing .*decode_head\.convs\.0\.bn\.running_var"
    ):
        convert_mmseg_state_dict(state)


def test_unexpected_keys_are_named():
    state = tiny_state()
    state["backbone.encoder.0.0.convs.0.conv.bias"] = torch.zeros(4)
    state["neck.lateral.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as error:
        convert_mmseg_state_dict(state)
    message = str(error.value)
    assert "1 keys match no conversion rule: neck.lateral.weight" in message
    assert "1 keys have no place in the model: backbone.encoder.0.0.convs.0.conv.bias" in message


def test_wrong_shape_is_named():
    state = tiny_state()
    state["backbone.decoder.1.conv_block.convs.1.conv.weight"] = torch.zeros(8, 8, 1, 1)
    with pytest.raises(
        ConversionError,
        match=r"wrong shape: backbone\.decoder\.1\.conv_block\.convs\.1\.conv\.weight \(8, 8, 1, 1\) != "
        r"unet\.decoder\.1\.block\.convs\.1\.conv\.weight \(8, 8, 3, 3\)",
    ):
        convert_mmseg_state_dict(state)


def test_two_keys_for_one_weight_are_refused():
    state = tiny_state()
    state["backbone.encoder.1.0.convs.0.conv.weight"] = state["backbone.encoder.1.1.convs.0.conv.weight"]
    with pytest.raises(ConversionError, match="given twice"):
        convert_mmseg_state_dict(state)


def test_truncated_and_foreign_files(tmp_path, capsys):
    torch.save({"state_dict": tiny_state()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"truncated\.pth: cannot read the checkpoint"):
        load_mmseg_checkpoint(tmp_path / "truncated.pth")
    assert convert_main([str(tmp_path / "truncated.pth"), str(tmp_path / "out")]) == 1
    assert "truncated.pth: cannot read the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ConversionError, match="expected a state dict"):
        load_mmseg_checkpoint(tmp_path / "tensor.pth")
    with pytest.raises(ConversionError, match="no such checkpoint file"):
        load_mmseg_checkpoint(tmp_path / "absent.pth")
    torch.save(
        {"state_dict": {"decode_head.conv_seg.weight": torch.zeros(2, 4, 1, 1)}}, tmp_path / "headless.pth"
    )
    assert convert_main([str(tmp_path / "headless.pth"), str(tmp_path / "out")]) == 1
    assert "no consecutive 'backbone.encoder.<i>' stages" in capsys.readouterr().err


def test_num_labels_must_match_the_checkpoint(tmp_path, capsys):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    assert convert_main([str(tmp_path / "tiny.pth"), str(tmp_path / "out"), "--num-labels", "6"]) == 1
    assert "--num-labels 6 but decode_head.conv_seg has 3 output labels" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "tiny.pth"), str(tmp_path / "out"), "--num-labels", "3"]) == 0
