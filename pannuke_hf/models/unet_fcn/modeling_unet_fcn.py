"""UNet-FCN: the UNet backbone + FCN head of mmsegmentation's fcn_unet_s5-d16, as a transformers model.

Architecture (defaults; every number comes from [`UNetFCNConfig`]):

* encoder stage 0: two 3x3 conv + BN + ReLU (3 -> 64), at H x W;
* encoder stage i = 1..4: 2x2 max-pool, then two 3x3 conv + BN + ReLU (64 * 2**i channels);
* decoder stage i = 3..0: upsample the deeper map (bilinear x2, 1x1 conv + BN + ReLU), concatenate
  ``[skip_i, upsampled]``, two 3x3 conv + BN + ReLU;
* FCN head on the 64@H map: 3x3 conv + BN + ReLU, Dropout2d(0.1), 1x1 classifier with bias.

With ``config.instance_head = "hv"`` two more heads read the same map: a nucleus-pixel head
(3x3 conv + BN + ReLU, 1x1 conv to 2 classes) and a distance-map head (the same, 2 channels, tanh):
each nucleus pixel's horizontal and vertical offset from its nucleus's centre, scaled to [-1, 1].

Convs before a BatchNorm carry no bias. This file is copied next to saved checkpoints
(``trust_remote_code``), so it imports only its sibling ``configuration_unet_fcn``.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
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
        if self.mode == "deconv":
            hidden_states = self.conv(hidden_states)
        else:
            # The reference interpolates, then applies the 1x1 conv. Both are linear and the conv
            # has no bias, so conv first gives the same map (up to float rounding) for a quarter
            # of the conv's FLOPs and half the interpolation work (C_out = C_in / 2 channels).
            hidden_states = self.conv(hidden_states)
            if self.mode == "bilinear":
                hidden_states = F.interpolate(
                    hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False
                )
            else:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return self.act(_batch_norm(self.bn, hidden_states))


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


class UNetFCNInstanceHead(nn.Module):
    """An instance head (``config.instance_head = "hv"``): 3x3 conv + BN + ReLU, 1x1 conv with bias.

    Input (B, C, h, w); output (B, out_channels, h, w), through tanh (values in [-1, 1]) when
    ``bounded``.
    """

    def __init__(self, config: UNetFCNConfig, in_channels: int, out_channels: int, bounded: bool = False):
        super().__init__()
        channels = config.instance_head_channels or config.head_channels
        self.conv = UNetFCNConvNormAct(config, in_channels, channels, kernel_size=3)
        self.classifier = UNetFCNClassifier(channels, out_channels)
        self.bounded = bounded

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.classifier(self.conv(hidden_states))
        return torch.tanh(output) if self.bounded else output


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

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = checkpoint, **kwargs: Any
    ) -> None:
        """Refuse reentrant activation checkpointing, then defer to ``PreTrainedModel``.

        ``torch.utils.checkpoint`` with ``use_reentrant=True`` gives a stage's output a gradient
        only when one of its *inputs* requires one; ``pixel_values`` does not, so every backbone
        parameter would silently keep ``grad = None`` and only the heads would train.
        """
        keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
        if enable and keywords.get("use_reentrant"):
            raise ValueError(
                "UNet-FCN does not support activation checkpointing with use_reentrant=True: the image input "
                "needs no gradient, so the reentrant mode would leave every backbone parameter untrained. Use "
                "the default non-reentrant mode (drop use_reentrant, or pass use_reentrant=False)."
            )
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func, **kwargs
        )

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
        if (
            pixel_values.device.type == "cpu"
            and not self.training
            and torch.is_inference_mode_enabled()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        ):
            # Inference (eval mode under torch.inference_mode) on the CPU: oneDNN's convolutions
            # are faster on channels-last maps (the outputs keep that layout; values agree to
            # float rounding). Not for training, where its backward passes are slower.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
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


def nuclei_map_loss(
    nuclei_logits: torch.Tensor,
    nuclei_labels: torch.Tensor,
    ignore_index: int,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy + soft Dice of the nucleus-pixel map.

    Args:
        nuclei_logits: (B, 2, h, w); bilinearly resized to the labels' size when it differs.
        nuclei_labels: (B, H, W) integers, 1 = nucleus pixel, 0 = not, ``ignore_index`` = ignored.
        ignore_index: label value excluded from both terms.
        ce_weight, dice_weight: weights of the two terms.

    Returns:
        ``ce_weight * CE + dice_weight * (1 - Dice)``, the Dice the mean over the two channels of
        ``(2 sum(p t) + 1e-3) / (sum(p) + sum(t) + 1e-3)`` over the batch's valid pixels
        (``p`` = softmax probability, ``t`` = one-hot target).
    """
    if nuclei_logits.shape[-2:] != nuclei_labels.shape[-2:]:
        nuclei_logits = F.interpolate(
            nuclei_logits, size=nuclei_labels.shape[-2:], mode="bilinear", align_corners=False
        )
    labels = nuclei_labels.long()
    loss = ce_weight * semantic_segmentation_loss(nuclei_logits, labels, ignore_index)
    valid = (labels != ignore_index).unsqueeze(1)
    probabilities = nuclei_logits.float().softmax(dim=1) * valid
    target = F.one_hot(torch.where(valid[:, 0], labels, 0).clamp(0, 1), 2).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probabilities * target).sum(dims)
    dice = (2 * intersection + 1e-3) / (probabilities.sum(dims) + target.sum(dims) + 1e-3)
    return loss + dice_weight * (1 - dice.mean())


def _hv_gradients(maps: torch.Tensor) -> torch.Tensor:
    """x-derivative of channel 0 and y-derivative of channel 1 of (B, 2, H, W) maps (5x5 Sobel).

    The kernel is the 5x5 Sobel operator (binomial smoothing [1, 4, 6, 4, 1] across, derivative
    [-1, -2, 0, 2, 1] along) divided by 128, so that a ramp rising by 1 per pixel has derivative 1;
    borders are replicated.
    """
    smooth = maps.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    derivative = maps.new_tensor([-1.0, -2.0, 0.0, 2.0, 1.0])
    along_x = torch.outer(smooth, derivative) / 128.0  # rows: y, columns: x
    kernels = torch.stack([along_x, along_x.t()]).unsqueeze(1)  # (2, 1, 5, 5)
    padded = F.pad(maps.float(), (2, 2, 2, 2), mode="replicate")
    return F.conv2d(padded, kernels, groups=2)


def hv_maps_loss(
    hv_maps: torch.Tensor,
    hv_labels: torch.Tensor,
    nuclei_labels: torch.Tensor,
    ignore_index: int,
    mse_weight: float = 1.0,
    msge_weight: float = 1.0,
) -> torch.Tensor:
    """MSE of the distance maps + MSE of their gradients inside nuclei (MSGE).

    Args:
        hv_maps: (B, 2, h, w) predicted maps (channel 0 horizontal, 1 vertical); bilinearly resized
            to the targets' size when it differs.
        hv_labels: (B, 2, H, W) float targets (0 outside nuclei).
        nuclei_labels: (B, H, W) nucleus-pixel labels (1 = nucleus, ``ignore_index`` = ignored):
            ignored pixels count in neither term, the MSGE averages over nucleus pixels.
        ignore_index: ignored label value.
        mse_weight, msge_weight: weights of the two terms.

    Returns:
        ``mse_weight * MSE + msge_weight * MSGE`` (a scalar; each term 0 when it has no pixel).
    """
    if hv_maps.shape[-2:] != hv_labels.shape[-2:]:
        hv_maps = F.interpolate(hv_maps, size=hv_labels.shape[-2:], mode="bilinear", align_corners=False)
    hv_maps, hv_labels = hv_maps.float(), hv_labels.float()
    valid = (nuclei_labels != ignore_index).unsqueeze(1).float()
    mse = ((hv_maps - hv_labels) ** 2 * valid).sum() / (2 * valid.sum()).clamp(min=1)
    focus = (nuclei_labels == 1).unsqueeze(1).float()
    error = (_hv_gradients(hv_maps) - _hv_gradients(hv_labels)) ** 2
    msge = (error * focus).sum() / (2 * focus.sum()).clamp(min=1)
    return mse_weight * mse + msge_weight * msge


@dataclass
class UNetFCNSemanticSegmenterOutput(SemanticSegmenterOutput):
    """``SemanticSegmenterOutput`` plus the outputs of the distance-map instance head.

    Args:
        nuclei_logits (`torch.FloatTensor` of shape `(batch_size, 2, height, width)`, *optional*):
            nucleus-pixel logits (channel 1 = nucleus); ``None`` without ``instance_head="hv"``.
        hv_maps (`torch.FloatTensor` of shape `(batch_size, 2, height, width)`, *optional*):
            each nucleus pixel's offset from its nucleus's centre, scaled to [-1, 1]: channel 0
            horizontal (x, positive to the right of the centre), channel 1 vertical (y, positive
            below it); ``None`` without ``instance_head="hv"``.
    """

    nuclei_logits: torch.FloatTensor | None = None
    hv_maps: torch.FloatTensor | None = None


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
        self.nuclei_head = self.hv_head = None
        if config.instance_head == "hv":
            in_channels = channels[config.head_in_index]
            self.nuclei_head = UNetFCNInstanceHead(config, in_channels, 2)
            self.hv_head = UNetFCNInstanceHead(config, in_channels, 2, bounded=True)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        nuclei_targets: torch.Tensor | None = None,
        hv_targets: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> UNetFCNSemanticSegmenterOutput | tuple:
        """Segment a batch of images.

        Args:
            pixel_values: (B, num_channels, H, W) normalised images, H and W multiples of
                ``config.output_stride`` (16 by default).
            labels: optional (B, H, W) int64 label maps; ``config.semantic_loss_ignore_index`` (255)
                is ignored. Gives ``loss`` = cross-entropy of the main head
                + ``auxiliary_loss_weight`` * cross-entropy of the auxiliary head (when enabled).
            nuclei_targets: optional (B, H, W) int64 nucleus-pixel targets of the ``"hv"`` instance head
                (1 = nucleus, 0 = not, 255 = ignored); when not given but ``labels`` are, they are
                ``labels > 0`` (ignored where ``labels`` are). Adds ``nuclei_ce_loss_weight`` *
                cross-entropy + ``nuclei_dice_loss_weight`` * (1 - Dice) of ``nuclei_logits``.
            hv_targets: optional (B, 2, H, W) float distance-map targets of the ``"hv"`` head (see
                ``pannuke_hf.training.instance_targets``); needs ``labels`` or ``nuclei_targets``.
                Adds ``hv_mse_loss_weight`` * MSE + ``hv_msge_loss_weight`` * MSGE of ``hv_maps``.
            output_hidden_states: also return the backbone outputs, deepest first.
            return_dict: return a ``UNetFCNSemanticSegmenterOutput`` (default) instead of a tuple.

        Only ``labels`` has "label" in its name: ``transformers.Trainer`` takes its label names from
        this signature and scores a batch only when every one of them is present, while evaluation
        batches carry ``labels`` alone. The optional instance targets are named ``*_targets``.

        Returns:
            ``UNetFCNSemanticSegmenterOutput`` with ``logits`` (B, num_labels, H, W) at input
            resolution, ``loss`` (scalar, the sum of the terms above) when targets are given, and
            with the ``"hv"`` head ``nuclei_logits`` (B, 2, H, W) and ``hv_maps`` (B, 2, H, W).
            As a tuple: the non-None of ``(loss, logits, nuclei_logits, hv_maps, hidden_states)``.
        """
        config = self.config
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        if self.nuclei_head is None and (nuclei_targets is not None or hv_targets is not None):
            raise ValueError(
                "nuclei_targets / hv_targets were given but the model has no instance head "
                '(config.instance_head is None; build it with instance_head="hv")'
            )
        features = self.unet.backbone_features(pixel_values)
        head_input = features[config.head_in_index]
        logits = self._at_input_size(self.decode_head(head_input), pixel_values)
        nuclei_logits = hv_maps = None
        if self.nuclei_head is not None:
            nuclei_logits = self._at_input_size(self.nuclei_head(head_input), pixel_values)
            hv_maps = self._at_input_size(self.hv_head(head_input), pixel_values)

        loss = None
        ignore = config.semantic_loss_ignore_index
        if labels is not None:
            loss = semantic_segmentation_loss(logits, labels, ignore)
            if self.auxiliary_head is not None:
                auxiliary_logits = self.auxiliary_head(features[config.auxiliary_in_index])
                auxiliary_loss = semantic_segmentation_loss(auxiliary_logits, labels, ignore)
                loss = loss + config.auxiliary_loss_weight * auxiliary_loss
        if self.nuclei_head is not None:
            if nuclei_targets is None and labels is not None:
                nuclei_targets = torch.where(labels == ignore, labels, (labels > 0).to(labels.dtype))
            if hv_targets is not None and nuclei_targets is None:
                raise ValueError("hv_targets need nuclei_targets or labels (which pixels are nuclei)")
            if nuclei_targets is not None:
                instance_loss = nuclei_map_loss(
                    nuclei_logits,
                    nuclei_targets,
                    ignore,
                    config.nuclei_ce_loss_weight,
                    config.nuclei_dice_loss_weight,
                )
                if hv_targets is not None:
                    instance_loss = instance_loss + hv_maps_loss(
                        hv_maps,
                        hv_targets,
                        nuclei_targets,
                        ignore,
                        config.hv_mse_loss_weight,
                        config.hv_msge_loss_weight,
                    )
                loss = instance_loss if loss is None else loss + instance_loss

        hidden_states = tuple(features) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (loss, logits, nuclei_logits, hv_maps, hidden_states) if v is not None)
        return UNetFCNSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=hidden_states,
            nuclei_logits=nuclei_logits,
            hv_maps=hv_maps,
        )

    @staticmethod
    def _at_input_size(maps: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Head outputs bilinearly resized to the input size when a head reads a coarser map."""
        if maps.shape[-2:] != pixel_values.shape[-2:]:
            maps = F.interpolate(maps, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return maps


__all__ = [
    "UNetFCNForSemanticSegmentation",
    "UNetFCNModel",
    "UNetFCNPreTrainedModel",
    "UNetFCNSemanticSegmenterOutput",
    "hv_maps_loss",
    "nuclei_map_loss",
    "semantic_segmentation_loss",
]
