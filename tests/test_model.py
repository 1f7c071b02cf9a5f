"""UNet-FCN model: architecture, loss, training features, Auto classes, remote code, pipeline."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from _isolated import run_without_pannuke_hf
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    pipeline,
)

from pannuke_hf import constants
from pannuke_hf.models.unet_fcn import (
    UNetFCNConfig,
    UNetFCNForSemanticSegmentation,
    UNetFCNImageProcessor,
    UNetFCNModel,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny convolutions on a shared 2-core box are many times faster on one thread (no spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> UNetFCNConfig:
    """5 stages like the reference but 4 base channels: runs in milliseconds at 32-64 px."""
    fields = dict(base_channels=4, head_channels=4, auxiliary_channels=4)
    fields.update(overrides)
    return UNetFCNConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> UNetFCNForSemanticSegmentation:
    torch.manual_seed(seed)
    return UNetFCNForSemanticSegmentation(tiny_config(**overrides)).eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def reference_model() -> UNetFCNForSemanticSegmentation:
    torch.manual_seed(0)
    return UNetFCNForSemanticSegmentation(UNetFCNConfig())


# ------------------------------------------------------------------------------------------
# Config and architecture
# ------------------------------------------------------------------------------------------


def test_default_model_is_the_reference_size(reference_model):
    assert n_params(reference_model) == 28_986_950
    assert n_params(reference_model.unet) == 28_949_568
    assert n_params(reference_model.decode_head) == 37_382
    assert reference_model.auxiliary_head is None
    assert len(reference_model.state_dict()) == 140


def test_default_init_follows_the_reference(reference_model):
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    conv = reference_model.unet.encoder[1].block.convs[1].conv.weight
    expected = (2.0 / (conv.shape[0] * 9)) ** 0.5
    assert conv.std().item() == pytest.approx(expected, rel=0.05)
    assert conv.mean().abs().item() < 0.1 * expected
    classifier = reference_model.decode_head.classifier
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.25)
    assert torch.all(classifier.bias == 0)
    for module in reference_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)
        if isinstance(module, torch.nn.Conv2d) and module is not classifier:
            assert module.bias is None


def test_default_config_is_the_reference_with_pannuke_labels(tmp_path):
    config = UNetFCNConfig()
    assert (config.base_channels, config.num_stages, config.output_stride) == (64, 5, 16)
    assert config.encoder_num_convs == [2] * 5 and config.decoder_num_convs == [2] * 4
    assert config.downsamples == [True] * 4 and config.strides == [1] * 5
    assert (config.head_channels, config.head_num_convs, config.head_dropout) == (64, 1, 0.1)
    assert (config.auxiliary_loss_weight, config.semantic_loss_ignore_index) == (0.4, 255)
    assert config.id2label == constants.ID2LABEL
    assert config.label2id == constants.LABEL2ID
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {str(i): name for i, name in constants.ID2LABEL.items()}
    assert saved["model_type"] == "unet_fcn"
    assert saved["auto_map"]["AutoConfig"] == "configuration_unet_fcn.UNetFCNConfig"
    assert AutoConfig.from_pretrained(tmp_path).id2label == constants.ID2LABEL


def test_per_stage_fields_follow_num_stages():
    config = UNetFCNConfig(num_stages=3, base_channels=4)
    assert config.encoder_num_convs == [2, 2, 2] and config.decoder_num_convs == [2, 2]
    assert config.strides == [1, 1, 1] and config.downsamples == [True, True]
    assert config.encoder_dilations == [1, 1, 1] and config.decoder_dilations == [1, 1]
    assert config.output_stride == 4
    with torch.no_grad():
        logits = UNetFCNForSemanticSegmentation(config).eval()(torch.randn(1, 3, 12, 20)).logits
    assert logits.shape == (1, 6, 12, 20)


def test_other_label_counts_get_generic_or_given_names():
    assert UNetFCNConfig(num_labels=3).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    config = UNetFCNConfig(id2label={0: "a", 1: "b"})
    assert config.num_labels == 2 and config.label2id == {"a": 0, "b": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_stages=4, encoder_num_convs=[2] * 5), "encoder_num_convs needs 4 entries"),
        (dict(strides=[1, 1, 1, 1]), "strides needs 5 entries"),
        (dict(downsamples=[True, True, True]), "downsamples needs 4 entries"),
        (dict(strides=[1, 2, 1, 1, 1]), "encoder stage 1 must halve the resolution exactly once"),
        (dict(downsamples=[True, False, True, True]), "encoder stage 2 must halve"),
        (dict(strides=[2, 1, 1, 1, 1]), "strides[0] must be 1"),
        (dict(head_in_index=5), "head_in_index 5 is out of range"),
        (dict(use_auxiliary_head=True, auxiliary_in_index=-6), "auxiliary_in_index -6 is out of range"),
        (dict(upsample_type="bicubic"), "upsample_type must be one of"),
        (dict(head_kernel_size=2), "head_kernel_size must be odd"),
        (dict(head_dropout=1.0), "head_dropout must be in [0, 1)"),
        (dict(encoder_dilations=[1, 0, 1, 1, 1]), "every entry of encoder_dilations must be >= 1"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        UNetFCNConfig(**overrides)


def test_auxiliary_head_size_and_position():
    # FCN auxiliary head on the 128-channel H/2 map: 3x3 conv 128 -> 64, BN, 1x1 conv 64 -> 6.
    with torch.device("meta"):
        model = UNetFCNForSemanticSegmentation(UNetFCNConfig(use_auxiliary_head=True))
    assert n_params(model.auxiliary_head) == 128 * 64 * 9 + 2 * 64 + 64 * 6 + 6
    assert n_params(model) == 28_986_950 + n_params(model.auxiliary_head)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64), (16, 80)])
def test_output_shapes(height, width):
    model = tiny_model(num_labels=3)
    pixel_values = torch.randn(2, 3, height, width)
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
    assert output.logits.shape == (2, 3, height, width)
    shapes = [tuple(h.shape) for h in output.hidden_states]
    expected = [(2, 4 * 2**i, height // 2**i, width // 2**i) for i in range(5)][::-1]
    assert shapes == expected
    assert output.loss is None
    base = model.unet(pixel_values, return_dict=True)
    torch.testing.assert_close(base.last_hidden_state, output.hidden_states[-1])


def test_head_on_a_lower_resolution_map_is_upsampled_to_the_input():
    model = tiny_model(head_in_index=-2, num_labels=2)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 48)).logits
    assert logits.shape == (1, 2, 32, 48)


@pytest.mark.parametrize("size", [(40, 32), (32, 24)])
def test_sizes_not_multiple_of_the_stride_are_refused(size):
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"multiples of 16 .*got {size[0]}x{size[1]}"):
        model(torch.randn(1, 3, *size))


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\), got \(1, 4, 32, 32\)"):
        tiny_model()(torch.randn(1, 4, 32, 32))


# ------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------


def test_loss_is_cross_entropy_ignoring_255():
    model = tiny_model(num_labels=4)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[0, :10] = 255
    labels[1, 5:9, 3:30] = 255
    output = model(pixel_values, labels=labels)
    # By hand: mean over the non-ignored pixels of -log softmax at the label.
    log_probs = output.logits.log_softmax(dim=1)
    keep = labels != 255
    picked = log_probs.gather(1, labels.clamp(max=3)[:, None])[:, 0]
    expected = -(picked[keep]).mean()
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels, ignore_index=255))


def test_loss_with_every_pixel_ignored_is_zero_and_differentiable():
    model = tiny_model().train()
    output = model(torch.randn(1, 3, 32, 32), labels=torch.full((1, 32, 32), 255))
    assert output.loss.item() == 0.0
    output.loss.backward()
    # Connected to the graph (a gradient exists) and nothing learnt: every gradient is exactly 0.
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.count_nonzero(parameter.grad) == 0, name


def test_loss_gradient_is_exactly_zero_at_ignored_pixels():
    """d loss / d logits: 0 at ignored pixels, (softmax - one-hot) / kept pixels elsewhere."""
    from pannuke_hf.models.unet_fcn.modeling_unet_fcn import semantic_segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, :3] = 255
    labels[1, :, 5:] = 255
    ignored = labels == 255
    semantic_segmentation_loss(logits, labels, ignore_index=255).backward()
    grad = logits.grad.permute(0, 2, 3, 1)  # (B, H, W, C)
    assert torch.count_nonzero(grad[ignored]) == 0
    kept = int((~ignored).sum())
    one_hot = F.one_hot(labels[~ignored], 4).to(torch.float64)
    expected = (logits.detach().softmax(dim=1).permute(0, 2, 3, 1)[~ignored] - one_hot) / kept
    torch.testing.assert_close(grad[~ignored], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weight", [0.4, 1.5])
def test_auxiliary_loss_is_added_with_its_weight(weight):
    model = tiny_model(use_auxiliary_head=True, auxiliary_loss_weight=weight, num_labels=3)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :4] = 255
    output = model(pixel_values, labels=labels)
    features = model.unet.backbone_features(pixel_values)
    auxiliary = model.auxiliary_head(features[-2])
    assert auxiliary.shape == (2, 3, 16, 16)  # FCN head on the 8-channel H/2 map
    auxiliary = F.interpolate(auxiliary, size=(32, 32), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(output.logits, labels, ignore_index=255) + weight * F.cross_entropy(
        auxiliary, labels, ignore_index=255
    )
    torch.testing.assert_close(output.loss, expected)
    # The auxiliary head never changes the logits.
    without = tiny_model(num_labels=3)
    without.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(without(pixel_values).logits, output.logits)


def test_forward_takes_no_loss_kwargs():
    assert UNetFCNForSemanticSegmentation.accepts_loss_kwargs is False
    with pytest.raises(TypeError):
        tiny_model()(torch.randn(1, 3, 32, 32), num_items_in_batch=5)


# ------------------------------------------------------------------------------------------
# Training features
# ------------------------------------------------------------------------------------------


def _train_step(model, pixel_values, labels):
    model.zero_grad()
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients_and_statistics():
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 6, (2, 32, 32))
    plain = tiny_model(head_dropout=0.0).train()
    checkpointed = tiny_model(head_dropout=0.0).train()
    checkpointed.activation_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in checkpointed.unet.encoder)
    assert all(stage.gradient_checkpointing for stage in checkpointed.unet.decoder)
    loss_a, grads_a = _train_step(plain, pixel_values, labels)
    loss_b, grads_b = _train_step(checkpointed, pixel_values, labels)
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    # The replayed forward must not update the BatchNorm statistics a second time.
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_reentrant_activation_checkpointing_is_refused():
    """use_reentrant=True would leave every backbone grad None (the image needs no gradient)."""
    model = tiny_model(head_dropout=0.0).train()
    with pytest.raises(ValueError, match="use_reentrant=True"):
        model.activation_checkpointing_enable({"use_reentrant": True})
    assert not any(stage.gradient_checkpointing for stage in model.unet.encoder)
    model.activation_checkpointing_enable()  # the default, non-reentrant mode trains the backbone
    model(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 6, (2, 32, 32))).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.encoder.parameters())


def test_deprecated_gradient_checkpointing_enable_still_works():
    model = tiny_model()
    with pytest.warns(FutureWarning):
        model.gradient_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in model.unet.encoder)
    model.activation_checkpointing_disable()
    assert not any(stage.gradient_checkpointing for stage in model.unet.encoder)


@pytest.mark.slow
def test_training_forward_compiles_without_graph_breaks():
    model = tiny_model().train()
    pixel_values, labels = torch.randn(1, 3, 32, 32), torch.randint(0, 6, (1, 32, 32))
    explanation = torch._dynamo.explain(model)(pixel_values, labels=labels)
    assert explanation.graph_break_count == 0


def test_channels_last_gives_the_same_logits():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model(pixel_values).logits
        model = model.to(memory_format=torch.channels_last)
        got = model(pixel_values.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_on_cpu_trains():
    model = tiny_model().train()
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 6, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_values, labels=labels)
    assert output.logits.dtype == torch.bfloat16
    assert torch.isfinite(output.loss) and output.loss.dtype == torch.float32
    output.loss.backward()
    grad = model.unet.encoder[0].block.convs[0].conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# Auto classes, save / load, remote code, pipeline
# ------------------------------------------------------------------------------------------


@pytest.fixture
def saved_tiny(tmp_path):
    """A tiny PanNuke-labelled model + processor (32x32) saved with save_pretrained."""
    model = tiny_model()
    # Larger classifier weights so that several classes appear in a prediction.
    torch.nn.init.normal_(model.decode_head.classifier.weight, std=2.0)
    model.save_pretrained(tmp_path)
    UNetFCNImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    return tmp_path, model


def test_round_trip_through_the_auto_classes(saved_tiny):
    path, model = saved_tiny
    assert (path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(path)
    assert isinstance(config, UNetFCNConfig) and config.base_channels == 4
    loaded = AutoModelForSemanticSegmentation.from_pretrained(path)
    assert type(loaded) is UNetFCNForSemanticSegmentation
    processor = AutoImageProcessor.from_pretrained(path)
    assert isinstance(processor, UNetFCNImageProcessor)
    assert (processor.size.height, processor.size.width) == (32, 32)
    assert tuple(processor.image_mean) == constants.IMAGE_MEAN
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    backbone = AutoModel.from_pretrained(path)
    assert type(backbone) is UNetFCNModel
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[f"unet.{name}"], rtol=0, atol=0)


def test_trust_remote_code_load_without_the_package(saved_tiny, tmp_path):
    path, model = saved_tiny
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.save({"x": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(path)!r}, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "UNetFCNImageProcessor"
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            logits = model.eval()(expected["x"]).logits
        torch.testing.assert_close(logits, expected["logits"], rtol=1e-4, atol=1e-5)
        print("LABELS", list(model.config.id2label.values()))
        print("PROCESSOR", processor(torch.zeros(3, 64, 64, dtype=torch.uint8), return_tensors="pt")["pixel_values"].shape)
        """
    )
    result = run_without_pannuke_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"LABELS {list(constants.CLASS_NAMES)}" in result.stdout
    assert "PROCESSOR torch.Size([1, 3, 32, 32])" in result.stdout


def test_pipeline_returns_one_named_mask_per_class_present(saved_tiny):
    path, model = saved_tiny
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=str(path))
    # the processor also has instance post-processing, which the pipeline prefers without a subtask
    results = segmenter(image, subtask="semantic")
    # Expected: processor -> model -> logits resized to the image -> argmax.
    processor = UNetFCNImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():
        logits = model(processor(image, return_tensors="pt")["pixel_values"]).logits
    prediction = processor.post_process_semantic_segmentation(
        type("Out", (), {"logits": logits})(), target_sizes=[(48, 40)]
    )[0]
    present = sorted(int(v) for v in prediction.unique())
    assert len(present) >= 2
    assert [r["label"] for r in results] == [constants.ID2LABEL[i] for i in present]
    for result, label in zip(results, present):
        mask = np.asarray(result["mask"])
        assert mask.shape == (48, 40)
        np.testing.assert_array_equal(mask == 255, prediction.numpy() == label)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_conv_first_equals_the_reference_order(mode):
    """The decoder's upsampling applies its bias-free 1x1 conv before interpolating (cheaper);
    the reference interpolates first. Both orders are linear maps, so they must agree (exactly
    for nearest, to float rounding for bilinear), in train mode (batch statistics) and eval."""
    from pannuke_hf.models.unet_fcn.modeling_unet_fcn import UNetFCNUpsample

    torch.manual_seed(3)
    upsample = UNetFCNUpsample(tiny_config(upsample_type=mode), 8, 4)
    torch.nn.init.normal_(upsample.conv.weight)
    hidden = torch.randn(2, 8, 5, 7)
    for train in (True, False):
        upsample.train(train)
        expected = F.interpolate(
            hidden, scale_factor=2.0, mode=mode, **({} if mode == "nearest" else {"align_corners": False})
        )
        expected = torch.relu(
            F.batch_norm(
                F.conv2d(expected, upsample.conv.weight), upsample.bn.running_mean.clone(),
                upsample.bn.running_var.clone(), upsample.bn.weight, upsample.bn.bias, train, 0.0, upsample.bn.eps,
            )
        )  # fmt: skip
        tolerance = {"rtol": 0, "atol": 0} if mode == "nearest" else {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(upsample(hidden), expected, **tolerance)


def test_cpu_inference_mode_forward_matches_plain_forward():
    """Under torch.inference_mode the CPU forward runs channels-last: same logits."""
    model = tiny_model(num_labels=3)
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model(pixel_values).logits
    with torch.inference_mode():
        got = model(pixel_values).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
