"""One way to serve the model: pipeline, image processor and `predict` agree; one resize rule everywhere.

* A region that is not one training patch (512 x 384 at 40x) reaches the model at the training
  scale, in the windows ``predict`` uses, whichever of the three paths it takes, and the three
  find the same nuclei (issue 18, item 2).
* Training, evaluation and serving resize with the same rule, OpenCV ``INTER_LINEAR`` for images
  and ``INTER_NEAREST`` for labels (the reference's ``mmcv.imresize``): the same patch gives the
  same model input through the training transform, the evaluation transform, the processor,
  ``predict_image`` and the pipeline (issue 18, item 10).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from _models import tiny_unet_fcn
from PIL import Image
from skimage.draw import disk

import pannuke_hf  # noqa: F401  (registers the Auto classes)
from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

REGION = (384, 512)  # height, width: a 512 x 384 region


def tissue_region(seed: int = 0) -> np.ndarray:
    """A 384 x 512 RGB image: smooth random colours with dark discs (nucleus-like blobs)."""
    rng = np.random.default_rng(seed)
    h, w = REGION
    coarse = rng.integers(120, 256, size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.uint8)
    image = np.array(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    for _ in range(60):
        centre = (int(rng.integers(0, h)), int(rng.integers(0, w)))
        colour = rng.integers(0, 120, size=3)
        image[disk(centre, int(rng.integers(4, 10)), shape=(h, w))] = colour
    return image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny UNet-FCN and the default processor saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny_unet")
    model = tiny_unet_fcn(seed=4)
    model.save_pretrained(folder)
    UNetFCNImageProcessor().save_pretrained(folder)
    return folder, model


def nuclei_by_mask(instances: np.ndarray, segments: list[dict]) -> set[tuple[int, bytes]]:
    """Each nucleus as (class, its pixels): comparable whatever the ids."""
    return {(int(s["label_id"]), np.packbits(instances == s["id"]).tobytes()) for s in segments}


def test_pipeline_processor_and_predict_find_the_same_nuclei(checkpoint, tmp_path):
    from transformers import pipeline

    from pannuke_hf.commands.predict import main
    from pannuke_hf.exports import read_instance_png
    from pannuke_hf.inference import predict_instances

    folder, model = checkpoint
    processor = UNetFCNImageProcessor.from_pretrained(folder)
    image = tissue_region()

    # 1. predict (library)
    instances, segments = predict_instances(model, processor, image)
    assert len(segments) >= 10  # enough nuclei for the comparison to mean something
    expected = nuclei_by_mask(instances, segments)

    # 2. the image processor + model + post-processing, by hand
    inputs = processor(image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (6, 3, 512, 512)  # six 256-pixel windows at 2x
    with torch.no_grad():
        outputs = model(**inputs)
    result = processor.post_process_instance_segmentation(outputs, target_sizes=[REGION])[0]
    by_processor = nuclei_by_mask(result["segmentation"].numpy(), result["segments_info"])
    assert by_processor == expected

    # 3. the image-segmentation pipeline (threshold 0: keep every nucleus, as predict does)
    segmenter = pipeline("image-segmentation", model=str(folder), device="cpu")
    found = segmenter(Image.fromarray(image), subtask="instance", threshold=0.0)
    label2id = {name: int(i) for i, name in model.config.id2label.items()}
    by_pipeline = {
        (label2id[item["label"]], np.packbits(np.asarray(item["mask"]) > 0).tobytes()) for item in found
    }
    assert len(found) == len(segments) and by_pipeline == expected

    # 4. `pannuke-hf predict --instances` on the image file
    Image.fromarray(image).save(tmp_path / "region.png")
    out = tmp_path / "out"
    code = main(
        [
            "--model",
            str(folder),
            str(tmp_path / "region.png"),
            "--out",
            str(out),
            "--instances",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert np.array_equal(read_instance_png(out / "region_instances.png"), instances)


def test_pipeline_semantic_maps_equal_predict_image(checkpoint):
    from transformers import pipeline

    from pannuke_hf.inference import predict_image

    folder, model = checkpoint
    processor = UNetFCNImageProcessor.from_pretrained(folder)
    image = tissue_region(seed=1)
    labels = predict_image(model, processor, image)
    assert len(np.unique(labels)) >= 3
    found = pipeline("image-segmentation", model=str(folder), device="cpu")(
        Image.fromarray(image), subtask="semantic"
    )
    label2id = {name: int(i) for i, name in model.config.id2label.items()}
    from_pipeline = np.zeros(REGION, np.int64)
    for item in found:
        from_pipeline[np.asarray(item["mask"]) > 0] = label2id[item["label"]]
    np.testing.assert_array_equal(from_pipeline, labels)


def test_the_processor_keeps_the_training_scale_for_any_image_size():
    """A window of the image always covers 256 image pixels, resized 2x: no squashing."""
    processor = UNetFCNImageProcessor()
    image = tissue_region()
    pixel_values = processor(image, return_tensors="np")["pixel_values"]
    plan = processor.tile_plan(*REGION)
    assert len(plan.corners) == len(pixel_values) == 6
    y, x = plan.corners[4]
    window = cv2.resize(image[y : y + 256, x : x + 256], (512, 512), interpolation=cv2.INTER_LINEAR)
    mean = np.asarray(processor.image_mean, np.float32)
    std = np.asarray(processor.image_std, np.float32)
    np.testing.assert_array_equal(
        pixel_values[4], ((window.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    )
    # an image smaller than a window is reflected up to one window, not stretched
    small = image[:100, :150]
    (values,) = processor(small, return_tensors="np")["pixel_values"]
    padded = np.pad(small, ((0, 156), (0, 106), (0, 0)), mode="reflect")
    window = cv2.resize(padded, (512, 512), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(values, ((window.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def test_stitching_needs_the_sizes_of_the_images_given_to_the_processor():
    processor = UNetFCNImageProcessor()
    logits = torch.zeros(6, 6, 512, 512)
    with pytest.raises(ValueError, match="make 1 windows of 256 pixels, but the outputs have 6"):
        processor.post_process_semantic_segmentation(
            type("O", (), {"logits": logits})(), target_sizes=[(256, 256)]
        )


# ---------------------------------------------------------------------------------------------
# One resize rule (issue 18, item 10)
# ---------------------------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """Wraps a model and keeps every ``pixel_values`` batch it sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seen = model, model.config, []

    def forward(self, pixel_values, **kwargs):
        self.seen.append(pixel_values.detach().clone())
        return self.model(pixel_values, **kwargs)


def test_the_same_patch_reaches_the_model_identically_on_every_path(checkpoint, monkeypatch):
    """Training transform (no augmentation), evaluation transform, processor, predict_image and
    pipeline: the same 256 x 256 patch gives the same (3, 512, 512) model input, bit for bit."""
    from transformers import pipeline

    from pannuke_hf.inference import predict_image
    from pannuke_hf.training.augment import SegmentationTransform

    folder, model = checkpoint
    processor = UNetFCNImageProcessor.from_pretrained(folder)
    patch = tissue_region(seed=2)[:256, 100:356]
    labels = (np.arange(256 * 256).reshape(256, 256) % 7 % 6).astype(np.uint8)
    labels[:, :13] = 255

    train = SegmentationTransform(512, train=True, photometric=False, flip_prob=0.0)
    evaluate = SegmentationTransform(512, train=False)
    trained = train.transform_example(Image.fromarray(patch), Image.fromarray(labels))
    evaluated = evaluate.transform_example(Image.fromarray(patch))["pixel_values"]
    served = processor(patch, segmentation_maps=labels, return_tensors="pt")

    recorder = _Recorder(model)
    predict_image(recorder, processor, patch)
    (predicted,) = recorder.seen

    seen = []
    original_forward = type(model).forward

    def spy(self, pixel_values=None, **kwargs):
        seen.append(pixel_values.detach().clone())
        return original_forward(self, pixel_values=pixel_values, **kwargs)

    segmenter = pipeline("image-segmentation", model=str(folder), device="cpu")
    monkeypatch.setattr(type(segmenter.model), "forward", spy)
    segmenter(Image.fromarray(patch), subtask="semantic")
    (piped,) = seen

    reference = trained["pixel_values"]
    assert reference.shape == (3, 512, 512)
    for name, values in [
        ("evaluation", evaluated),
        ("processor", served["pixel_values"][0]),
        ("predict_image", predicted[0]),
        ("pipeline", piped[0]),
    ]:
        assert torch.equal(values.float(), reference), f"{name} input differs from training's"
    # labels: OpenCV's nearest (source floor(x * in / out)), as the training transform
    assert torch.equal(served["labels"][0], trained["labels"])


@pytest.mark.parametrize("size", [384, 200])
def test_the_resize_rule_holds_at_non_integer_factors(size):
    """256 -> 384 (1.5x) and 256 -> 200 (shrinking, where antialiasing would differ): processor,
    predict_image and the training transform give the same input; labels use OpenCV's nearest."""
    from pannuke_hf.inference import predict_image
    from pannuke_hf.training.augment import SegmentationTransform

    processor = UNetFCNImageProcessor(size={"height": size, "width": size}, output_stride=1)
    patch = tissue_region(seed=3)[100:356, :256]
    labels = (np.arange(256 * 256).reshape(256, 256) % 5).astype(np.uint8)
    trained = SegmentationTransform(size, train=True, photometric=False, flip_prob=0.0).transform_example(
        Image.fromarray(patch), Image.fromarray(labels)
    )
    served = processor(patch, segmentation_maps=labels, return_tensors="pt")
    recorder = _Recorder(tiny_unet_fcn())
    predict_image(recorder, processor, patch)
    (predicted,) = recorder.seen
    assert torch.equal(served["pixel_values"][0], trained["pixel_values"])
    assert torch.equal(predicted[0, :, :size, :size], trained["pixel_values"])
    assert torch.equal(served["labels"][0], trained["labels"])
    expected = labels[(np.arange(size) * 256) // size][:, (np.arange(size) * 256) // size]
    np.testing.assert_array_equal(served["labels"][0].numpy(), expected)


def test_evaluation_and_predict_image_give_the_same_label_maps():
    """The demo's setting (input 128 for 256 patches): `evaluate`'s path (evaluation transform,
    model, logits resized to the label) and `predict_image` agree pixel for pixel, so the two
    score the same mIoU on the same images."""
    from pannuke_hf.inference import predict_image
    from pannuke_hf.metrics.trainer import logits_to_label_maps
    from pannuke_hf.training.augment import SegmentationTransform

    model = tiny_unet_fcn(seed=5)
    processor = UNetFCNImageProcessor(size={"height": 128, "width": 128})
    transform = SegmentationTransform(128, train=False)
    for seed in range(3):
        patch = tissue_region(seed=10 + seed)[:256, :256]
        pixel_values = transform.transform_example(Image.fromarray(patch))["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values[None]).logits
        evaluated = logits_to_label_maps(logits, (256, 256))[0].numpy()
        predicted = predict_image(model, processor, patch)
        assert len(np.unique(predicted)) >= 2
        np.testing.assert_array_equal(predicted, evaluated)


def test_a_distance_map_model_agrees_too():
    """With the hv head, the nucleus logits and distance maps are stitched like the class logits."""
    from pannuke_hf.inference import predict_instances
    from pannuke_hf.models.unet_fcn import UNetFCNForSemanticSegmentation
    from tests._models import tiny_config

    torch.manual_seed(0)
    model = UNetFCNForSemanticSegmentation(tiny_config(instance_head="hv")).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)  # sharper maps: more nuclei
    processor = UNetFCNImageProcessor()
    image = tissue_region()
    instances, segments = predict_instances(model, processor, image)
    assert len(segments) >= 10
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    assert outputs.hv_maps is not None
    result = processor.post_process_instance_segmentation(outputs, target_sizes=[REGION])[0]
    assert nuclei_by_mask(result["segmentation"].numpy(), result["segments_info"]) == nuclei_by_mask(
        instances, segments
    )
