"""The distance-map ("hv") instance head: default model unchanged, outputs, losses, training, save / load."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _isolated import run_without_pannuke_hf
from test_convert_mmseg import read_reference_tsv
from transformers import AutoModelForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.data.synthetic import make_synthetic_patch
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation
from pannuke_hf.models.unet_fcn.convert_mmseg_unet_fcn_to_hf import rename_key
from pannuke_hf.models.unet_fcn.modeling_unet_fcn import hv_maps_loss, nuclei_map_loss
from pannuke_hf.nuclei import release_to_instances
from pannuke_hf.training.instance_targets import hv_targets


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_hv(seed: int = 0, **fields) -> UNetFCNForSemanticSegmentation:
    torch.manual_seed(seed)
    config = UNetFCNConfig(
        base_channels=4, num_stages=3, head_channels=8, classifier_init_std=0.2, instance_head="hv", **fields
    )
    return UNetFCNForSemanticSegmentation(config)


def test_default_model_is_unchanged():
    model = UNetFCNForSemanticSegmentation(UNetFCNConfig())
    assert model.config.instance_head is None
    assert sum(p.numel() for p in model.parameters()) == 28_986_950
    # Exactly the reference's state-dict entries (so mmseg checkpoints still convert strictly).
    assert set(model.state_dict()) == {rename_key(key) for key in read_reference_tsv()}
    with torch.no_grad():
        output = model.eval()(torch.zeros(1, 3, 16, 16))
    assert isinstance(output, SemanticSegmenterOutput)
    assert output.nuclei_logits is None and output.hv_maps is None
    assert list(output.keys()) == ["logits"]


def test_hv_head_outputs_and_parameters():
    model = tiny_hv().eval()
    plain = UNetFCNForSemanticSegmentation(UNetFCNConfig(base_channels=4, num_stages=3, head_channels=8))
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) < set(model.state_dict())
    assert {key.split(".")[0] for key in extra} == {"nuclei_head", "hv_head"}
    # Each head: 3x3 conv (4 -> 8, no bias) + BN + 1x1 conv (8 -> 2, bias).
    head_params = 8 * 4 * 9 + 2 * 8 + 2 * 8 + 2
    assert (
        sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
        == 2 * head_params
    )
    pixel_values = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        output = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
    assert output.logits.shape == (2, 6, 32, 48)
    assert output.nuclei_logits.shape == (2, 2, 32, 48) and output.hv_maps.shape == (2, 2, 32, 48)
    assert output.hv_maps.abs().max() <= 1.0
    assert len(as_tuple) == 3
    torch.testing.assert_close(as_tuple[2], output.hv_maps)


def test_invalid_head_settings_are_refused():
    with pytest.raises(ValueError, match="instance_head must be one of"):
        UNetFCNConfig(instance_head="star")
    with pytest.raises(ValueError, match="hv_msge_loss_weight must be >= 0"):
        UNetFCNConfig(instance_head="hv", hv_msge_loss_weight=-1.0)
    plain = UNetFCNForSemanticSegmentation(UNetFCNConfig(base_channels=4, num_stages=2))
    with pytest.raises(ValueError, match="no instance head"):
        plain(torch.zeros(1, 3, 16, 16), nuclei_targets=torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="need nuclei_targets or labels"):
        tiny_hv()(torch.zeros(1, 3, 16, 16), hv_targets=torch.zeros(1, 2, 16, 16))


def test_nuclei_loss_is_cross_entropy_plus_dice():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 6, generator=generator)
    labels = torch.randint(0, 2, (2, 5, 6), generator=generator)
    labels[0, 0, :3] = 255
    valid = labels != 255
    # Independent computation: mean CE over valid pixels; Dice per channel over valid pixels.
    ce = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], labels[valid])
    p = logits.softmax(1).permute(0, 2, 3, 1)[valid]  # (N, 2)
    t = F.one_hot(labels[valid], 2).float()
    dice = ((2 * (p * t).sum(0) + 1e-3) / (p.sum(0) + t.sum(0) + 1e-3)).mean()
    expected = 0.7 * ce + 1.3 * (1 - dice)
    torch.testing.assert_close(nuclei_map_loss(logits, labels, 255, 0.7, 1.3), expected)


def test_hv_loss_is_mse_plus_gradient_mse_inside_nuclei():
    import cv2

    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (1, 2, 12, 14)).astype(np.float32)
    prediction = rng.uniform(-1, 1, (1, 2, 12, 14)).astype(np.float32)
    nuclei = (rng.random((1, 12, 14)) < 0.5).astype(np.int64)
    nuclei[0, 0, 0] = 255
    valid = nuclei[0] != 255
    mse = ((prediction - target) ** 2)[0][:, valid].mean()
    # The 5x5 Sobel derivative from OpenCV's kernels, scaled so that a unit ramp has slope 1.

    def gradient(maps):
        dx = cv2.Sobel(maps[0], cv2.CV_64F, 1, 0, ksize=5, borderType=cv2.BORDER_REPLICATE) / 128
        dy = cv2.Sobel(maps[1], cv2.CV_64F, 0, 1, ksize=5, borderType=cv2.BORDER_REPLICATE) / 128
        return np.stack([dx, dy])

    focus = nuclei[0] == 1
    msge = ((gradient(prediction[0]) - gradient(target[0])) ** 2)[:, focus].mean()
    loss = hv_maps_loss(
        torch.from_numpy(prediction), torch.from_numpy(target), torch.from_numpy(nuclei), 255, 2.0, 3.0
    )
    assert loss.item() == pytest.approx(2.0 * mse + 3.0 * msge, rel=1e-5)
    # A ramp rising by 1 per pixel against a flat target: gradient error 1 at every interior pixel.
    ramp = torch.arange(10.0).repeat(10, 1)
    interior = torch.zeros(1, 10, 10, dtype=torch.long)
    interior[:, 2:-2, 2:-2] = 1
    slope = hv_maps_loss(
        torch.stack([ramp, ramp.t()])[None], torch.zeros(1, 2, 10, 10), interior, 255, 0.0, 1.0
    )
    assert slope.item() == pytest.approx(1.0)


def test_forward_loss_adds_every_term():
    model = tiny_hv(nuclei_ce_loss_weight=0.5, hv_mse_loss_weight=2.0, hv_msge_loss_weight=3.0).eval()
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 6, (2, 16, 16), generator=generator)
    labels[1, :4] = 255
    hv = torch.rand(2, 2, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        output = model(pixel_values, labels=labels, hv_targets=hv)
        nuclei = torch.where(labels == 255, 255, (labels > 0).long())
        expected = (
            F.cross_entropy(output.logits, labels, ignore_index=255)
            + nuclei_map_loss(output.nuclei_logits, nuclei, 255, 0.5, 1.0)
            + hv_maps_loss(output.hv_maps, hv, nuclei, 255, 2.0, 3.0)
        )
        torch.testing.assert_close(output.loss, expected)
        # Without targets for the distance maps, only the nucleus-map terms join the CE.
        no_hv = model(pixel_values, labels=labels).loss
        torch.testing.assert_close(no_hv, expected - hv_maps_loss(output.hv_maps, hv, nuclei, 255, 2.0, 3.0))


def generated_batch(size: int = 48, count: int = 3) -> dict[str, torch.Tensor]:
    """Generated patches with touching nuclei, at ``size`` px, with the head's targets."""
    import cv2

    images, labels, nuclei, hvs = [], [], [], []
    for index in range(5, 5 + count):
        image, masks, _ = make_synthetic_patch(0, 1, index, touching=0.6)
        instances, classes = release_to_instances(masks)
        lookup = np.zeros(int(instances.max()) + 1, dtype=np.int64)
        lookup[list(classes)] = list(classes.values())
        semantic = lookup[instances]
        image = cv2.resize(image.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        instances = cv2.resize(instances.astype(np.int32), (size, size), interpolation=cv2.INTER_NEAREST)
        semantic = cv2.resize(semantic.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        images.append(torch.from_numpy((image.astype(np.float32) - 128) / 64).permute(2, 0, 1))
        labels.append(torch.from_numpy(semantic.astype(np.int64)))
        nuclei.append(torch.from_numpy((instances > 0).astype(np.int64)))
        hvs.append(torch.from_numpy(hv_targets(instances)))
    return {
        "pixel_values": torch.stack(images),
        "labels": torch.stack(labels),
        "nuclei_targets": torch.stack(nuclei),
        "hv_targets": torch.stack(hvs),
    }


def test_a_tiny_hv_model_learns_on_generated_data():
    batch = generated_batch()
    model = tiny_hv().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses, hv_losses = [], []
    for _ in range(20):
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.item())
        with torch.no_grad():
            hv_losses.append(
                hv_maps_loss(output.hv_maps, batch["hv_targets"], batch["nuclei_targets"], 255).item()
            )
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert np.mean(hv_losses[-3:]) < np.mean(hv_losses[:3]), hv_losses


def test_save_and_reload_keep_the_head(tmp_path):
    model = tiny_hv(hv_msge_loss_weight=4.0).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.instance_head == "hv" and loaded.config.hv_msge_loss_weight == 4.0
    pixel_values = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected, got = model(pixel_values), loaded(pixel_values)
    for name in ("logits", "nuclei_logits", "hv_maps"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_a_head_can_be_added_to_a_plain_checkpoint(tmp_path):
    torch.manual_seed(0)
    plain = UNetFCNForSemanticSegmentation(
        UNetFCNConfig(base_channels=4, num_stages=3, head_channels=8)
    ).eval()
    plain.save_pretrained(tmp_path)
    grown = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, instance_head="hv").eval()
    assert grown.hv_head is not None
    pixel_values = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grown(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=0)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: 20-45 s on a busy machine
def test_trust_remote_code_keeps_the_head(tmp_path):
    model = tiny_hv().eval()
    model.save_pretrained(tmp_path / "model")
    pixel_values = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        output = model(pixel_values)
    torch.save(
        {"x": pixel_values, "nuclei": output.nuclei_logits, "hv": output.hv_maps}, tmp_path / "expected.pt"
    )
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            output = model.eval()(expected["x"])
        torch.testing.assert_close(output.nuclei_logits, expected["nuclei"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.hv_maps, expected["hv"], rtol=1e-4, atol=1e-5)
        print("HEAD", model.config.instance_head, type(output).__name__)
        """
    )
    result = run_without_pannuke_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HEAD hv UNetFCNSemanticSegmenterOutput" in result.stdout


@pytest.mark.slow
def test_hv_training_forward_compiles_without_graph_breaks():
    """torch.compile captures the hv model's training forward, the three losses included, as one graph."""
    model = tiny_hv().train()
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 6, (2, 32, 32))
    nuclei = (labels > 0).long()
    hv = torch.rand(2, 2, 32, 32) * 2 - 1
    explanation = torch._dynamo.explain(model)(
        pixel_values, labels=labels, nuclei_targets=nuclei, hv_targets=hv
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
