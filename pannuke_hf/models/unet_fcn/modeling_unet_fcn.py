"""UNet-FCN: the UNet backbone + FCN head of mmsegmentation's fcn_unet_s5-d16, as a transformers model.

Architecture (defaults; every number comes from [`UNetFCNConfig`]):

* encoder stage 0: two 3x3 conv + BN + ReLU (3 -> 64), at H x W;
* encoder stage i = 1..4: 2x2 max-pool, then two 3x3 conv + BN + ReLU (64 * 2**i channels);
* decoder stage i = 3..0: upsample the deeper map (bilinear x2, 1x1 conv + BN + ReLU), concatenate
  ``[skip_i, upsampled]``, two 3x3 conv + BN + ReLU;
* FCN head on the 64@H map: 3x3 conv + BN + ReLU, Dropout2d(0.1), 1x1 classifier with bias.

Convs before a BatchNorm carry no bias. This file is copied next to saved checkpoints
(``trust_remote_code``), so it imports only its sibling ``configuration_unet_fcn``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithNoAttention, SemanticSegmenterOutput

from .configuration_unet_fcn import UNetFCNConfig


def _in_backward_pass() -> bool:
    """True while autograd runs a backward pass (where activation checkpointing recomputes)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def _batch_norm(bn: nn.BatchNorm2d, hidden_states: torch.Tensor) -> torch.Tensor:
    """Apply ``bn``, except that a forward replayed by activation checkpointing during backward
    updates copies of the running mean / var (same batch statistics and saved tensors as the first
    pass, but the statistics are not updated twice)."""
    # Under torch.compile the replay is handled by the compiler (and the check would break the graph);
    # SyncBatchNorm must keep its cross-process statistics, so it is left as is.
    if (
        bn.training
        and bn.track_running_stats
        and not isinstance(bn, nn.SyncBatchNorm)
        and not torch.compiler.is_compiling()
        and _in_backward_pass()
    ):
        return F.batch_norm(
            hidden_states,
            bn.running_mean.clone(),
            bn.running_var.clone(),
            bn.weight,
            bn.bias,
            True,
            bn.momentum or 0.0,
            bn.eps,
        )
    return bn(hidden_states)


class UNetFCNConvNormAct(nn.Module):
    """Conv (no bias) + BatchNorm + ReLU: the unit every part of the network is built from.

    Input (B, in_channels, H, W); output (B, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        config: UNetFCNConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.act = nn.ReLU(inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(_batch_norm(self.bn, self.conv(hidden_states)))


class UNetFCNConvBlock(nn.Module):
    """``num_convs`` 3x3 conv + BN + ReLU units; only the first changes channels and applies the stride."""

    def __init__(
        self,
        config: UNetFCNConfig,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.convs = nn.ModuleList(
            UNetFCNConvNormAct(
                config,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=3,
                stride=stride if i == 0 else 1,
                dilation=dilation,
            )
            for i in range(num_convs)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states)
        return hidden_states


class UNetFCNEncoderStage(GradientCheckpointingLayer):
    """One encoder stage: optional 2x2 max-pool, then a conv block.

    Input (B, C_in, H, W); output (B, C_out, H', W') with H' = H / 2 when the stage downsamples.
    """

    def __init__(self, config: UNetFCNConfig, index: int):
        super().__init__()
        channels = config.stage_channels()
        in_channels = config.num_channels if index == 0 else channels[index - 1]
        self.pool = nn.MaxPool2d(kernel_size=2) if index > 0 and config.downsamples[index - 1] else None
        self.block = UNetFCNConvBlock(
            config,
            in_channels,
            channels[index],
            config.encoder_num_convs[index],
            stride=config.strides[index],
            dilation=config.encoder_dilations[index],
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            hidden_states = self.pool(hidden_states)
        return self.block(hidden_states)


class UNetFCNUpsample(nn.Module):
    """Doubles the resolution and changes channels: interpolation + 1x1 conv, or a 4x4 transposed conv.

    Both are followed by BN + ReLU. Input (B, C_in, h, w); output (B, C_out, 2h, 2w).
    """

    def __init__(self, config: UNetFCNConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.mode = config.upsample_type
        if self.mode == "deconv":
            self.conv = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.act = nn.ReLU(inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            hidden_states = F.interpolate(
                hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False
            )
        elif self.mode == "nearest":
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return self.act(_batch_norm(self.bn, self.conv(hidden_states)))


class UNetFCNDecoderStage(GradientCheckpointingLayer):
    """Decoder stage ``index``: brings the deeper map to the resolution of encoder stage ``index``.

    ``forward(skip, deeper)``: skip (B, C, H, W) from encoder stage ``index``, deeper (B, 2C, H/2, W/2);
    returns (B, C, H, W) = conv_block(cat([skip, upsample(deeper)])).
    """

    def __init__(self, config: UNetFCNConfig, index: int):
        super().__init__()
        channels = config.stage_channels()
        skip_channels, deeper_channels = channels[index], channels[index + 1]
        self.upsample = UNetFCNUpsample(config, deeper_channels, skip_channels)
        self.block = UNetFCNConvBlock(
            config,
            2 * skip_channels,
            skip_channels,
            config.decoder_num_convs[index],
            dilation=config.decoder_dilations[index],
        )

    def forward(self, skip: torch.Tensor, deeper: torch.Tensor) -> torch.Tensor:
        upsampled = self.upsample(deeper)
        return self.block(torch.cat([skip, upsampled], dim=1))


class UNetFCNHead(nn.Module):
    """FCN head: ``num_convs`` conv + BN + ReLU, Dropout2d, 1x1 classifier (with bias).

    Input (B, C, h, w); output logits (B, num_labels, h, w).
    """

    def __init__(self, config: UNetFCNConfig, in_channels: int, channels: int, num_convs: int):
        super().__init__()
        kernel = config.head_kernel_size
        self.convs = nn.ModuleList(
            UNetFCNConvNormAct(config, in_channels if i == 0 else channels, channels, kernel_size=kernel)
            for i in range(num_convs)
        )
        self.dropout = nn.Dropout2d(config.head_dropout)
        self.classifier = UNetFCNClassifier(channels if num_convs > 0 else in_channels, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states)
        return self.classifier(self.dropout(hidden_states))


class UNetFCNClassifier(nn.Conv2d):
    """1x1 conv with bias from features to per-label logits (its own class for its own init)."""

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__(in_channels, num_labels, kernel_size=1, bias=True)


class UNetFCNPreTrainedModel(PreTrainedModel):
    """Base class owning the config class and the weight initialisation of the reference.

    Convs: Kaiming normal (fan_out, ReLU), bias 0; BatchNorms: weight 1, bias 0, fresh running
    statistics; 1x1 classifiers: normal(0, ``config.classifier_init_std``), bias 0.
    """

    config_class = UNetFCNConfig
    base_model_prefix = "unet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["UNetFCNEncoderStage", "UNetFCNDecoderStage"]
    # forward has no **kwargs: the Trainer must not rescale the loss by the number of processes.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, UNetFCNClassifier):
            init.normal_(module.weight, mean=0.0, std=self.config.classifier_init_std)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, a=0, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class UNetFCNModel(UNetFCNPreTrainedModel):
    """The UNet backbone alone: returns the full-resolution map and, on request, every decoder output."""

    def __init__(self, config: UNetFCNConfig):
        super().__init__(config)
        self.encoder = nn.ModuleList(UNetFCNEncoderStage(config, i) for i in range(config.num_stages))
        self.decoder = nn.ModuleList(UNetFCNDecoderStage(config, i) for i in range(config.num_stages - 1))
        self.post_init()

    def check_input(self, pixel_values: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``pixel_values`` is (B, num_channels, H, W), H and W multiples of the stride."""
        config = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"UNet-FCN expects pixel_values of shape (batch, {config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        stride = config.output_stride
        if height % stride or width % stride:
            raise ValueError(
                f"UNet-FCN needs input height and width that are multiples of {stride} (the total stride of "
                f"its {config.num_stages} stages), got {height}x{width}. Resize or pad the images (the image "
                f"processor resizes to {stride}-multiples such as 512x512)."
            )

    def backbone_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Run encoder and decoder; return one map per stage, deepest first (defaults: 1024@H/16 ... 64@H)."""
        self.check_input(pixel_values)
        skips = []
        hidden_states = pixel_values
        for stage in self.encoder:
            hidden_states = stage(hidden_states)
            skips.append(hidden_states)
        outputs = [hidden_states]
        for index in reversed(range(len(self.decoder))):
            hidden_states = self.decoder[index](skips[index], hidden_states)
            outputs.append(hidden_states)
        return outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithNoAttention | tuple:
        """Backbone forward.

        Args:
            pixel_values: (B, num_channels, H, W), H and W multiples of ``config.output_stride``.
            output_hidden_states: also return every stage output, deepest first.
            return_dict: return a ``ModelOutput`` (default ``config.return_dict``) instead of a tuple.

        Returns:
            ``BaseModelOutputWithNoAttention`` with ``last_hidden_state`` (B, base_channels, H, W).
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        features = self.backbone_features(pixel_values)
        hidden_states = tuple(features) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (features[-1], hidden_states) if v is not None)
        return BaseModelOutputWithNoAttention(last_hidden_state=features[-1], hidden_states=hidden_states)


def semantic_segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: (B, num_labels, h, w); bilinearly resized to the labels' size when it differs.
        labels: (B, H, W) integer labels.
        ignore_index: label value excluded from the loss.

    Returns:
        A scalar float32 tensor; 0 (still differentiable) when every pixel is ignored.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    labels = labels.long()
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    # Dividing by a clamped count instead of branching keeps the step free of a device sync.
    count = (labels != ignore_index).sum().clamp(min=1)
    return total / count


class UNetFCNForSemanticSegmentation(UNetFCNPreTrainedModel):
    """UNet backbone + FCN head (+ optional auxiliary FCN head) for semantic segmentation."""

    def __init__(self, config: UNetFCNConfig):
        super().__init__(config)
        channels = config.stage_channels()[::-1]  # backbone outputs, deepest first
        self.unet = UNetFCNModel(config)
        self.decode_head = UNetFCNHead(
            config, channels[config.head_in_index], config.head_channels, config.head_num_convs
        )
        self.auxiliary_head = (
            UNetFCNHead(
                config,
                channels[config.auxiliary_in_index],
                config.auxiliary_channels,
                config.auxiliary_num_convs,
            )
            if config.use_auxiliary_head
            else None
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        """Segment a batch of images.

        Args:
            pixel_values: (B, num_channels, H, W) normalised images, H and W multiples of
                ``config.output_stride`` (16 by default).
            labels: optional (B, H, W) int64 label maps; ``config.semantic_loss_ignore_index`` (255)
                is ignored. Gives ``loss`` = cross-entropy of the main head
                + ``auxiliary_loss_weight`` * cross-entropy of the auxiliary head (when enabled).
            output_hidden_states: also return the backbone outputs, deepest first.
            return_dict: return a ``SemanticSegmenterOutput`` (default) instead of a tuple.

        Returns:
            ``SemanticSegmenterOutput`` with ``logits`` (B, num_labels, H, W) at input resolution and
            ``loss`` (scalar) when labels are given.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        features = self.unet.backbone_features(pixel_values)
        logits = self.decode_head(features[self.config.head_in_index])
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

        loss = None
        if labels is not None:
            ignore = self.config.semantic_loss_ignore_index
            loss = semantic_segmentation_loss(logits, labels, ignore)
            if self.auxiliary_head is not None:
                auxiliary_logits = self.auxiliary_head(features[self.config.auxiliary_in_index])
                auxiliary_loss = semantic_segmentation_loss(auxiliary_logits, labels, ignore)
                loss = loss + self.config.auxiliary_loss_weight * auxiliary_loss

        hidden_states = tuple(features) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)


__all__ = [
    "UNetFCNForSemanticSegmentation",
    "UNetFCNModel",
    "UNetFCNPreTrainedModel",
    "semantic_segmentation_loss",
]
