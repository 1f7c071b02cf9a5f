"""Configuration of the UNet-FCN semantic segmentation model (mmsegmentation's fcn_unet_s5-d16).

This file is copied next to saved checkpoints (``trust_remote_code``), so it imports nothing from
``pannuke_hf``: the PanNuke label names are injected by the package (see
``pannuke_hf.models.unet_fcn``), not written here.
"""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

#: Per-stage fields: (reference value of each entry, entries = num_stages - offset) when not given.
PER_STAGE_DEFAULTS: dict[str, tuple[object, int]] = {
    "encoder_num_convs": (2, 0),
    "decoder_num_convs": (2, 1),
    "strides": (1, 0),
    "downsamples": (True, 1),
    "encoder_dilations": (1, 0),
    "decoder_dilations": (1, 1),
}

#: Upsampling styles of a decoder stage (see ``UNetFCNConfig.upsample_type``).
UPSAMPLE_TYPES: tuple[str, ...] = ("bilinear", "nearest", "deconv")
#: Instance heads (see ``UNetFCNConfig.instance_head``); ``None`` = none.
INSTANCE_HEADS: tuple[str | None, ...] = (None, "hv")


@strict
class UNetFCNConfig(PreTrainedConfig):
    r"""Configuration of [`UNetFCNForSemanticSegmentation`]: a UNet backbone and an FCN head.

    The defaults build the reference model (mmsegmentation ``fcn_unet_s5-d16``): 5 stages, base 64
    channels, 2 convs per stage, max-pool downsampling (total stride 16), bilinear x2 + 1x1 conv
    upsampling, one 3x3 conv FCN head on the full-resolution 64-channel map, 6 labels, no
    auxiliary head: 28,986,950 parameters.

    The backbone returns one feature map per stage, deepest first (for the defaults
    1024@H/16, 512@H/8, 256@H/4, 128@H/2, 64@H); ``head_in_index`` and ``auxiliary_in_index``
    index that list (negative values count from the end, as in Python).

    Labels: ``num_labels`` (default 6) or ``id2label`` / ``label2id``. When neither ``id2label``
    nor ``label2id`` is given and ``num_labels`` equals the length of the class attribute
    ``default_id2label``, those names are used. This file leaves ``default_id2label`` unset
    (generic ``LABEL_i`` names); importing ``pannuke_hf`` sets it to the PanNuke class names, and
    saved ``config.json`` files always carry the names.

    Args:
        num_channels (`int`, defaults to 3): channels of the input images.
        base_channels (`int`, defaults to 64): channels of the first stage; stage i has
            ``base_channels * 2**i``.
        num_stages (`int`, defaults to 5): encoder stages (the decoder has ``num_stages - 1``).
            The per-stage lists below, when not given, repeat the reference value for every stage
            (e.g. ``UNetFCNConfig(num_stages=3)`` has ``encoder_num_convs=[2, 2, 2]``).
        encoder_num_convs (`list[int]`, defaults to ``[2, 2, 2, 2, 2]``): 3x3 convs per encoder stage.
        decoder_num_convs (`list[int]`, defaults to ``[2, 2, 2, 2]``): 3x3 convs per decoder stage
            (index i = the stage producing the resolution of encoder stage i).
        strides (`list[int]`, defaults to ``[1, 1, 1, 1, 1]``): stride (1 or 2) of the first conv of
            each encoder stage; stage 0 must use 1.
        downsamples (`list[bool]`, defaults to ``[True, True, True, True]``): whether encoder stage
            i + 1 starts with a 2x2 max-pool. Each stage after the first halves the resolution
            exactly once: by its max-pool or by a stride-2 first conv.
        encoder_dilations (`list[int]`, defaults to ``[1, 1, 1, 1, 1]``): dilation of the convs of
            each encoder stage (padding equals dilation, so sizes are kept).
        decoder_dilations (`list[int]`, defaults to ``[1, 1, 1, 1]``): same for each decoder stage.
        upsample_type (`str`, defaults to ``"bilinear"``): how a decoder stage doubles the resolution
            of the deeper map: ``"bilinear"`` (x2, align_corners False) or ``"nearest"``
            interpolation then a 1x1 conv + BN + ReLU, or ``"deconv"`` (4x4 transposed conv,
            stride 2, + BN + ReLU).
        batch_norm_eps (`float`, defaults to 1e-5): epsilon of every BatchNorm.
        batch_norm_momentum (`float`, defaults to 0.1): momentum of every BatchNorm.
        head_in_index (`int`, defaults to -1): backbone output the FCN head reads (-1 = 64@H).
        head_channels (`int`, defaults to 64): channels of the head's convs.
        head_num_convs (`int`, defaults to 1): convs (+ BN + ReLU) of the head before the classifier;
            0 feeds the classifier the backbone map directly.
        head_kernel_size (`int`, defaults to 3): kernel size of those convs (odd).
        head_dropout (`float`, defaults to 0.1): Dropout2d probability before the 1x1 classifier
            (both heads).
        use_auxiliary_head (`bool`, defaults to False): add an auxiliary FCN head used only for the
            training loss.
        auxiliary_in_index (`int`, defaults to -2): backbone output the auxiliary head reads
            (-2 = 128@H/2 for the defaults).
        auxiliary_channels (`int`, defaults to 64): channels of the auxiliary head's convs.
        auxiliary_num_convs (`int`, defaults to 1): convs of the auxiliary head.
        auxiliary_loss_weight (`float`, defaults to 0.4): weight of the auxiliary loss in the total.
        semantic_loss_ignore_index (`int`, defaults to 255): label value ignored by the loss.
        classifier_init_std (`float`, defaults to 0.01): std of the normal init of the 1x1
            classifiers (convs use Kaiming normal, fan_out, ReLU; BatchNorms weight 1, bias 0).
        instance_head (`str`, *optional*): ``None`` (the reference model) or ``"hv"``: two more
            small heads on the map the FCN head reads, a nucleus-pixel map (2 classes,
            ``nuclei_logits``) and horizontal / vertical distance maps (``hv_maps``, in [-1, 1]),
            from which touching nuclei are told apart (HoVer-Net style).
        instance_head_channels (`int`, *optional*): channels of the conv of each instance head
            (``None``: ``head_channels``).
        nuclei_ce_loss_weight (`float`, defaults to 1.0): weight of the cross-entropy of the nucleus map.
        nuclei_dice_loss_weight (`float`, defaults to 1.0): weight of the soft Dice loss of the nucleus map.
        hv_mse_loss_weight (`float`, defaults to 1.0): weight of the MSE of the distance maps (all pixels).
        hv_msge_loss_weight (`float`, defaults to 10.0): weight of the MSE of the distance maps' Sobel
            gradients (x-derivative of the horizontal map, y-derivative of the vertical map, per
            pixel) inside nuclei; per-pixel gradients are small, and 10 separates touching nuclei
            far better than 1 in the demo (docs/instance-head.md).
        mpp (`float`, defaults to 0.25): µm per pixel of the images the model was trained on (PanNuke:
            0.25, 40x); whole slides are resampled to it. Checkpoints saved without it read 0.25.
    """

    model_type = "unet_fcn"
    #: Names used for ``id2label`` when none are given and ``num_labels`` matches their count.
    #: Set by ``pannuke_hf`` on import (the PanNuke classes); ``None`` gives ``LABEL_i`` names.
    default_id2label: ClassVar[dict[int, str] | None] = None
    #: ``num_labels`` when neither ``num_labels`` nor ``id2label`` is given.
    default_num_labels: ClassVar[int] = 6

    num_channels: int = 3
    base_channels: int = 64
    num_stages: int = 5
    encoder_num_convs: list[int] | tuple[int, ...] | None = None
    decoder_num_convs: list[int] | tuple[int, ...] | None = None
    strides: list[int] | tuple[int, ...] | None = None
    downsamples: list[bool] | tuple[bool, ...] | None = None
    encoder_dilations: list[int] | tuple[int, ...] | None = None
    decoder_dilations: list[int] | tuple[int, ...] | None = None
    upsample_type: str = "bilinear"
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1
    head_in_index: int = -1
    head_channels: int = 64
    head_num_convs: int = 1
    head_kernel_size: int = 3
    head_dropout: float | int = 0.1
    use_auxiliary_head: bool = False
    auxiliary_in_index: int = -2
    auxiliary_channels: int = 64
    auxiliary_num_convs: int = 1
    auxiliary_loss_weight: float | int = 0.4
    semantic_loss_ignore_index: int = 255
    classifier_init_std: float = 0.01
    instance_head: str | None = None
    instance_head_channels: int | None = None
    nuclei_ce_loss_weight: float | int = 1.0
    nuclei_dice_loss_weight: float | int = 1.0
    hv_mse_loss_weight: float | int = 1.0
    hv_msge_loss_weight: float | int = 10.0
    mpp: float | int = 0.25

    def __post_init__(self, **kwargs):
        if self.id2label is None and self.label2id is not None:
            self.id2label = {int(i): name for name, i in self.label2id.items()}
        if self.id2label is None:
            num_labels = kwargs.pop("num_labels", None)
            num_labels = self.default_num_labels if num_labels is None else num_labels
            names = type(self).default_id2label
            if names is not None and len(names) == num_labels:
                self.id2label = dict(names)
                self.label2id = {name: i for i, name in self.id2label.items()}
            else:
                kwargs["num_labels"] = num_labels
        super().__post_init__(**kwargs)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        for name, (per_stage, offset) in PER_STAGE_DEFAULTS.items():
            value = getattr(self, name)
            if value is None:  # the reference value for every stage (or decoder stage)
                value = [per_stage] * max(self.num_stages - offset, 0)
            # JSON round trips give lists; keep one type so configs compare equal.
            setattr(self, name, list(value))
        self._check_architecture()

    def _check_architecture(self) -> None:
        """Raise ``ValueError`` naming every inconsistent field (run at construction)."""
        problems = []
        n = self.num_stages
        if n < 1:
            problems.append(f"num_stages must be >= 1, got {n}")
        for name, expected in (
            ("encoder_num_convs", n),
            ("strides", n),
            ("encoder_dilations", n),
            ("decoder_num_convs", n - 1),
            ("downsamples", n - 1),
            ("decoder_dilations", n - 1),
        ):
            value = getattr(self, name)
            if len(value) != expected:
                problems.append(
                    f"{name} needs {expected} entries (num_stages={n}), got {len(value)}: {value}"
                )
        for name in ("encoder_num_convs", "decoder_num_convs", "encoder_dilations", "decoder_dilations"):
            if any(v < 1 for v in getattr(self, name)):
                problems.append(f"every entry of {name} must be >= 1, got {getattr(self, name)}")
        if any(s not in (1, 2) for s in self.strides):
            problems.append(f"strides must be 1 or 2, got {self.strides}")
        elif self.strides and self.strides[0] != 1:
            problems.append(
                f"strides[0] must be 1 (the first stage keeps the input size), got {self.strides[0]}"
            )
        if len(self.strides) == n and len(self.downsamples) == n - 1:
            for i in range(1, n):
                halvings = int(self.strides[i] == 2) + int(bool(self.downsamples[i - 1]))
                if halvings != 1:
                    problems.append(
                        f"encoder stage {i} must halve the resolution exactly once (downsamples[{i - 1}]="
                        f"{self.downsamples[i - 1]}, strides[{i}]={self.strides[i]})"
                    )
        if self.num_channels < 1 or self.base_channels < 1:
            problems.append(
                f"num_channels and base_channels must be >= 1, got {self.num_channels}, {self.base_channels}"
            )
        if self.upsample_type not in UPSAMPLE_TYPES:
            problems.append(f"upsample_type must be one of {UPSAMPLE_TYPES}, got {self.upsample_type!r}")
        if not -n <= self.head_in_index < n:
            problems.append(f"head_in_index {self.head_in_index} is out of range for {n} backbone outputs")
        if self.use_auxiliary_head and not -n <= self.auxiliary_in_index < n:
            problems.append(
                f"auxiliary_in_index {self.auxiliary_in_index} is out of range for {n} backbone outputs"
            )
        if self.head_channels < 1 or self.auxiliary_channels < 1:
            problems.append("head_channels and auxiliary_channels must be >= 1")
        if self.head_num_convs < 0 or self.auxiliary_num_convs < 0:
            problems.append("head_num_convs and auxiliary_num_convs must be >= 0")
        if self.head_kernel_size < 1 or self.head_kernel_size % 2 == 0:
            problems.append(f"head_kernel_size must be odd and positive, got {self.head_kernel_size}")
        if not 0.0 <= self.head_dropout < 1.0:
            problems.append(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.auxiliary_loss_weight < 0:
            problems.append(f"auxiliary_loss_weight must be >= 0, got {self.auxiliary_loss_weight}")
        if self.instance_head not in INSTANCE_HEADS:
            problems.append(f"instance_head must be one of {INSTANCE_HEADS}, got {self.instance_head!r}")
        if self.instance_head_channels is not None and self.instance_head_channels < 1:
            problems.append(f"instance_head_channels must be >= 1, got {self.instance_head_channels}")
        for name in (
            "nuclei_ce_loss_weight",
            "nuclei_dice_loss_weight",
            "hv_mse_loss_weight",
            "hv_msge_loss_weight",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_labels is None or self.num_labels < 1:
            problems.append(f"num_labels must be >= 1, got {self.num_labels}")
        if problems:
            raise ValueError("Invalid UNetFCNConfig: " + "; ".join(problems))

    def to_diff_dict(self) -> dict:
        """The fields that differ from the defaults, always with ``id2label`` and ``label2id``.

        transformers leaves the label maps out when they equal those of a bare ``PreTrainedConfig``
        (two generic ``LABEL_i`` names); reloading would then fall back to this class's defaults
        (6 labels), so a 2-label model would not load. The maps are therefore always written.
        """
        output = super().to_diff_dict()
        output["id2label"] = {int(i): name for i, name in self.id2label.items()}
        output["label2id"] = {name: int(i) for name, i in self.label2id.items()}
        return output

    @property
    def output_stride(self) -> int:
        """Total downsampling factor of the backbone: input sides must be multiples of it."""
        return 2 ** (self.num_stages - 1)

    def stage_channels(self) -> list[int]:
        """Channels of encoder stage i, ``base_channels * 2**i``, for i in ``range(num_stages)``."""
        return [self.base_channels * 2**i for i in range(self.num_stages)]


__all__ = ["UNetFCNConfig"]
