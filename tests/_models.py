"""Tiny models shared by the tests (seconds on two CPU cores)."""

from __future__ import annotations

import torch


def tiny_config(**overrides):
    """The config of the 2-stage, 4-channel UNet-FCN of these tests; ``overrides`` change fields
    (e.g. ``instance_head="hv"``)."""
    from pannuke_hf.models.unet_fcn import UNetFCNConfig

    fields = dict(
        base_channels=4,
        num_stages=2,
        encoder_num_convs=[1, 1],
        decoder_num_convs=[1],
        strides=[1, 1],
        downsamples=[True],
        encoder_dilations=[1, 1],
        decoder_dilations=[1],
        head_channels=4,
    )
    return UNetFCNConfig(**{**fields, **overrides})


def tiny_unet_fcn(seed: int = 0, classifier_std: float = 2.0):
    """A 2-stage UNet-FCN with 4 channels in eval mode; the classifier is scaled up (weights
    N(0, ``classifier_std``), bias N(0, 0.5)) so that several classes win in blobs."""
    from pannuke_hf.models.unet_fcn import UNetFCNForSemanticSegmentation

    torch.manual_seed(seed)
    model = UNetFCNForSemanticSegmentation(tiny_config()).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.normal_(0, classifier_std)
        model.decode_head.classifier.bias.normal_(0, 0.5)
    return model
