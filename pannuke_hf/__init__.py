"""pannuke-hf: the PanNuke nuclei dataset as a first-class citizen of the Hugging Face ecosystem.

Importing the package registers:

* the dataset builder, so that ``datasets.load_dataset("pannuke_hf", data_dir=...)`` works;
* the UNet-FCN config, model and image processor with the transformers Auto classes.
"""

from __future__ import annotations

from .constants import CLASS_NAMES, ID2LABEL, LABEL2ID, PALETTE, TISSUES

__version__ = "0.1.0"

__all__ = ["CLASS_NAMES", "ID2LABEL", "LABEL2ID", "PALETTE", "TISSUES", "__version__"]


def _register() -> None:
    from .data import registration as _data_registration  # noqa: F401
    from .models import unet_fcn as _unet_fcn  # noqa: F401


_register()
