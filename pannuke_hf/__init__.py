"""pannuke-hf: the PanNuke nuclei dataset as a first-class citizen of the Hugging Face ecosystem.

Importing the package is light: it imports neither ``datasets`` nor ``transformers`` nor ``torch``.
It arranges that

* ``datasets.load_dataset("pannuke_hf", data_dir=...)`` finds the PanNuke builder, and
* the UNet-FCN config, models and image processor resolve through the transformers Auto classes
  (``AutoConfig``, ``AutoModel``, ``AutoModelForSemanticSegmentation``, ``AutoImageProcessor``,
  model type ``"unet_fcn"``) and the ``image-segmentation`` pipeline,

by registering with each library when that library is imported (at once when it already is); see
``pannuke_hf._import_hooks``.
"""

from __future__ import annotations

from .constants import CLASS_NAMES, ID2LABEL, LABEL2ID, PALETTE, TISSUES

__version__ = "0.1.0"

__all__ = ["CLASS_NAMES", "ID2LABEL", "LABEL2ID", "PALETTE", "TISSUES", "__version__"]


def _register() -> None:
    from ._import_hooks import when_imported
    from .data.registration import register_with_datasets
    from .models.unet_fcn import install_auto_registration

    # datasets.load holds load_dataset and imports the packaged-module table the builder joins.
    when_imported("datasets.load", register_with_datasets)
    install_auto_registration()


_register()
