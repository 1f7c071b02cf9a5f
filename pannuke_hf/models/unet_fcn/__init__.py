"""The UNet-FCN model (mmsegmentation fcn_unet_s5-d16) as a transformers model, for PanNuke.

The classes load lazily: ``from pannuke_hf.models.unet_fcn import UNetFCNConfig`` imports the
configuration only, ``UNetFCNForSemanticSegmentation`` the model (and torch). Whenever one of the
files is loaded this package:

* gives the config and the image processor their PanNuke defaults from ``pannuke_hf.constants``
  (label names, mean / std, input size), which the model files cannot import themselves because
  they are copied alone next to saved checkpoints for ``trust_remote_code`` loading;
* marks the classes with ``register_for_auto_class`` so that saved checkpoints carry an
  ``auto_map`` and their code, and load with ``trust_remote_code=True`` where ``pannuke_hf`` is
  not installed. transformers maps only the saved class in ``auto_map``; a saved
  ``UNetFCNForSemanticSegmentation`` also maps ``AutoModel`` (its backbone, ``UNetFCNModel``), so
  ``AutoConfig``, ``AutoModel``, ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``
  all load a saved or pushed checkpoint without the package.

:func:`install_auto_registration` (run by ``import pannuke_hf``) registers config, models and
processor with ``AutoConfig``, ``AutoModel``, ``AutoModelForSemanticSegmentation`` and
``AutoImageProcessor``, each when transformers loads that Auto class, so that importing
``pannuke_hf`` imports neither transformers nor torch. It also lists the model among the
``image-segmentation`` pipeline's models and tells ``AutoVideoProcessor`` that the model has no
video processor (otherwise the pipeline, probing for one, asks whether to run the checkpoint's code).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ... import constants
from ..._import_hooks import when_imported

MODEL_TYPE: str = "unet_fcn"

#: public name -> module (in this package) that defines it
_LAZY: dict[str, str] = {
    "UNetFCNConfig": "configuration_unet_fcn",
    "UNetFCNImageProcessor": "image_processing_unet_fcn",
    "UNetFCNModel": "modeling_unet_fcn",
    "UNetFCNPreTrainedModel": "modeling_unet_fcn",
    "UNetFCNForSemanticSegmentation": "modeling_unet_fcn",
    "convert_mmseg_checkpoint": "convert_mmseg_unet_fcn_to_hf",
    "convert_mmseg_state_dict": "convert_mmseg_unet_fcn_to_hf",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# ---------------------------------------------------------------------------------------------
# PanNuke defaults and remote-code marks, applied when each model file is loaded
# ---------------------------------------------------------------------------------------------


def _prepare_configuration(module: ModuleType) -> None:
    """``UNetFCNConfig()`` uses the PanNuke label names; saved configs carry an ``auto_map``."""
    config_class = module.UNetFCNConfig
    config_class.default_id2label = dict(constants.ID2LABEL)
    config_class.default_num_labels = constants.NUM_LABELS
    config_class.register_for_auto_class()


def _prepare_image_processing(module: ModuleType) -> None:
    """``UNetFCNImageProcessor()`` uses PanNuke's mean / std and the reference input size."""
    processor_class = module.UNetFCNImageProcessor
    processor_class.image_mean = tuple(constants.IMAGE_MEAN)
    processor_class.image_std = tuple(constants.IMAGE_STD)
    processor_class.size = {"height": constants.REFERENCE_INPUT_SIZE, "width": constants.REFERENCE_INPUT_SIZE}
    processor_class.register_for_auto_class("AutoImageProcessor")


def _prepare_modeling(module: ModuleType) -> None:
    """Saved models carry an ``auto_map`` for ``AutoModel`` / ``AutoModelForSemanticSegmentation``."""
    module.UNetFCNModel.register_for_auto_class("AutoModel")
    module.UNetFCNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    _map_the_backbone_too(module.UNetFCNForSemanticSegmentation, module.UNetFCNModel)


def _map_the_backbone_too(model_class: type, backbone_class: type) -> None:
    """Make ``model_class.save_pretrained`` write an ``AutoModel`` entry for ``backbone_class``.

    transformers writes one ``auto_map`` entry, the saved class's own (``custom_object_save``
    adds it to the entries the config already has). Without an ``AutoModel`` entry,
    ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` fails where ``pannuke_hf`` is not
    installed; with it, the backbone loads from the checkpoint (``base_model_prefix``). Both
    classes live in the same code file, which the checkpoint carries.
    """
    save = model_class.save_pretrained
    if getattr(save, "_maps_backbone", False):
        return
    entry = f"{backbone_class.__module__.rsplit('.', 1)[-1]}.{backbone_class.__name__}"

    @functools.wraps(save)
    def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.config.auto_map = {"AutoModel": entry, **(getattr(self.config, "auto_map", None) or {})}
        return save(self, *args, **kwargs)

    save_pretrained._maps_backbone = True  # type: ignore[attr-defined]
    model_class.save_pretrained = save_pretrained


when_imported(f"{__name__}.configuration_unet_fcn", _prepare_configuration)
when_imported(f"{__name__}.image_processing_unet_fcn", _prepare_image_processing)
when_imported(f"{__name__}.modeling_unet_fcn", _prepare_modeling)


# ---------------------------------------------------------------------------------------------
# Auto classes: each registration runs once transformers has loaded the Auto module concerned
# ---------------------------------------------------------------------------------------------

_AUTO = "transformers.models.auto."
_AUTO_REGISTRATION_INSTALLED = False


def _when_ready(file: str, callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` with this package's model file ``file``, fully imported.

    Importing a model file can itself make transformers load an Auto module (and so call the
    functions below) before the file has finished; the registration then waits for the file.
    """
    name = f"{__name__}.{file}"
    module = sys.modules.get(name)
    if module is not None and getattr(module.__spec__, "_initializing", False):
        when_imported(name, callback)  # a watched file (see above): runs once it has finished
    else:
        callback(importlib.import_module(name))


def _register_config(configuration_auto: ModuleType) -> None:
    def register(configuration: ModuleType) -> None:
        configuration_auto.AutoConfig.register(MODEL_TYPE, configuration.UNetFCNConfig, exist_ok=True)

    _when_ready("configuration_unet_fcn", register)


def _register_models(modeling_auto: ModuleType) -> None:
    def register(modeling: ModuleType) -> None:
        config_class = modeling.UNetFCNForSemanticSegmentation.config_class
        modeling_auto.AutoModel.register(config_class, modeling.UNetFCNModel, exist_ok=True)
        modeling_auto.AutoModelForSemanticSegmentation.register(
            config_class, modeling.UNetFCNForSemanticSegmentation, exist_ok=True
        )
        # The image-segmentation pipeline checks the model's class name against these name tables
        # (plain dicts) and warns "not supported" otherwise; the Auto mappings resolve our config
        # through the registration above before they would look here.
        modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
            MODEL_TYPE, modeling.UNetFCNForSemanticSegmentation.__name__
        )

    _when_ready("modeling_unet_fcn", register)


def _register_image_processor(image_processing_auto: ModuleType) -> None:
    def register(image_processing: ModuleType) -> None:
        from .configuration_unet_fcn import UNetFCNConfig

        image_processing_auto.AutoImageProcessor.register(
            UNetFCNConfig,
            image_processor_classes={"pil": image_processing.UNetFCNImageProcessor},
            exist_ok=True,
        )

    _when_ready("image_processing_unet_fcn", register)


def _register_no_video_processor(video_processing_auto: ModuleType) -> None:
    # Pipelines probe for a video processor; one derived from the image processor's auto_map
    # would count as remote code and prompt. An empty entry says: this model has none.
    def register(configuration: ModuleType) -> None:
        video_processing_auto.VIDEO_PROCESSOR_MAPPING.register(configuration.UNetFCNConfig, {}, exist_ok=True)

    _when_ready("configuration_unet_fcn", register)


def install_auto_registration() -> None:
    """Register UNet-FCN with the transformers Auto classes, now or when transformers loads them.

    Run by ``import pannuke_hf``; imports nothing itself. Later calls do nothing.
    """
    global _AUTO_REGISTRATION_INSTALLED
    if _AUTO_REGISTRATION_INSTALLED:
        return
    _AUTO_REGISTRATION_INSTALLED = True
    when_imported(_AUTO + "configuration_auto", _register_config)
    when_imported(_AUTO + "modeling_auto", _register_models)
    when_imported(_AUTO + "image_processing_auto", _register_image_processor)
    when_imported(_AUTO + "video_processing_auto", _register_no_video_processor)
