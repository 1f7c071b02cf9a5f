"""The UNet-FCN model (mmsegmentation fcn_unet_s5-d16) as a transformers model, for PanNuke.

Importing this package (``import pannuke_hf`` does) :

* gives the config and the image processor their PanNuke defaults from ``pannuke_hf.constants``
  (label names, mean / std), which the model files cannot import themselves because they are
  copied alone next to saved checkpoints for ``trust_remote_code`` loading;
* registers config, model and processor with ``AutoConfig``, ``AutoModel``,
  ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``;
* marks them with ``register_for_auto_class`` so that saved checkpoints carry an ``auto_map``
  and their code, and load with ``trust_remote_code=True`` where ``pannuke_hf`` is not installed.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

from ... import constants
from .configuration_unet_fcn import UNetFCNConfig
from .image_processing_unet_fcn import UNetFCNImageProcessor
from .modeling_unet_fcn import UNetFCNForSemanticSegmentation, UNetFCNModel, UNetFCNPreTrainedModel


def _inject_pannuke_defaults() -> None:
    """Make ``UNetFCNConfig()`` and ``UNetFCNImageProcessor()`` use the PanNuke facts."""
    UNetFCNConfig.default_id2label = dict(constants.ID2LABEL)
    UNetFCNConfig.default_num_labels = constants.NUM_LABELS
    UNetFCNImageProcessor.image_mean = tuple(constants.IMAGE_MEAN)
    UNetFCNImageProcessor.image_std = tuple(constants.IMAGE_STD)
    UNetFCNImageProcessor.size = {
        "height": constants.REFERENCE_INPUT_SIZE,
        "width": constants.REFERENCE_INPUT_SIZE,
    }


def _register_auto_classes() -> None:
    """Register with the Auto classes (idempotent) and mark the classes for remote-code saving."""
    AutoConfig.register(UNetFCNConfig.model_type, UNetFCNConfig, exist_ok=True)
    AutoModel.register(UNetFCNConfig, UNetFCNModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(UNetFCNConfig, UNetFCNForSemanticSegmentation, exist_ok=True)
    AutoImageProcessor.register(
        UNetFCNConfig, image_processor_classes={"pil": UNetFCNImageProcessor}, exist_ok=True
    )
    UNetFCNConfig.register_for_auto_class()
    UNetFCNModel.register_for_auto_class("AutoModel")
    UNetFCNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    UNetFCNImageProcessor.register_for_auto_class("AutoImageProcessor")


_inject_pannuke_defaults()
_register_auto_classes()

from .convert_mmseg_unet_fcn_to_hf import convert_mmseg_checkpoint, convert_mmseg_state_dict  # noqa: E402

__all__ = [
    "UNetFCNConfig",
    "UNetFCNForSemanticSegmentation",
    "UNetFCNImageProcessor",
    "UNetFCNModel",
    "UNetFCNPreTrainedModel",
    "convert_mmseg_checkpoint",
    "convert_mmseg_state_dict",
]
