"""The PanNuke facts used everywhere in the package, defined once.

Sources: the public PanNuke release and its description (see README, "Citation"). The semantic
label values are those of the mmsegmentation PanNuke project, so scores stay comparable, but
with the correct names (that project mislabels labels 2-5).
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Semantic labels (values 0-5, as written by the reference project, correct names)
# --------------------------------------------------------------------------------------------

# One set of names, used everywhere (docs/instances.md, "Class names and colours"):
#
# * CLASS_NAMES are identifiers: the model's ``id2label`` / ``label2id`` (so checkpoints keep
#   loading), dataset ``ClassLabel`` names, metric keys (``iou_epithelial``) and column names.
# * CLASS_FULL_NAMES are what a person reads or a tool imports: the ``class`` values of the
#   per-nucleus CSV, the QuPath class of each GeoJSON detection, tables and legends. Only the full
#   name says that label 5 is *non*-neoplastic epithelium (beside "neoplastic", "epithelial"
#   alone reads as the opposite to a pathologist). Same spelling in every file, never recased.

#: Short name (identifier) of each semantic label, indexed by label value.
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "neoplastic",
    "inflammatory",
    "connective",
    "dead",
    "epithelial",
)

#: Full, human-readable name of each semantic label, indexed by label value.
CLASS_FULL_NAMES: tuple[str, ...] = (
    "background",
    "neoplastic",
    "inflammatory",
    "connective / soft tissue",
    "dead",
    "non-neoplastic epithelial",
)

#: Full name of a class from its short or full name; other names (a custom id2label) unchanged.
FULL_CLASS_NAME: dict[str, str] = dict(zip(CLASS_NAMES, CLASS_FULL_NAMES))


def full_class_name(name: str) -> str:
    """The name shown to people for a class name from ``id2label``, e.g. ``"epithelial"`` ->
    ``"non-neoplastic epithelial"``; a name outside PanNuke's classes is returned unchanged."""
    return FULL_CLASS_NAME.get(name, name)


NUM_LABELS: int = len(CLASS_NAMES)
BACKGROUND_LABEL: int = 0
#: Label value ignored by the loss and the metrics (padding, optionally void pixels).
IGNORE_INDEX: int = 255
#: Labels void pixels may receive (``void_label``): 0 (background, as the reference) or
#: ``IGNORE_INDEX`` (left out by the loss and the metrics). Any other value would turn void pixels
#: into a nucleus class.
VOID_LABELS: tuple[int, ...] = (BACKGROUND_LABEL, IGNORE_INDEX)

ID2LABEL: dict[int, str] = dict(enumerate(CLASS_NAMES))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}

# --------------------------------------------------------------------------------------------
# Raw masks.npy channels
# --------------------------------------------------------------------------------------------

#: What each channel of the raw ``masks.npy`` holds, in channel order. Channels 0-4 hold
#: instance ids of one nucleus class (0 = not this class); channel 5 is 1 on background.
RAW_CHANNELS: tuple[str, ...] = (
    "neoplastic",
    "inflammatory",
    "connective",
    "dead",
    "epithelial",
    "background",
)
NUM_RAW_CHANNELS: int = len(RAW_CHANNELS)
#: Number of nucleus-class channels (0-4); the last raw channel is background.
NUM_NUCLEUS_CHANNELS: int = 5
BACKGROUND_CHANNEL: int = 5

#: Semantic label written for raw channel j: ``(j + 1) % 6``, as the reference project does.
RAW_CHANNEL_TO_LABEL: tuple[int, ...] = tuple((j + 1) % NUM_RAW_CHANNELS for j in range(NUM_RAW_CHANNELS))

# --------------------------------------------------------------------------------------------
# Tissues, folds, patches
# --------------------------------------------------------------------------------------------

#: The 19 tissue strings exactly as stored in ``types.npy``.
TISSUES: tuple[str, ...] = (
    "Adrenal_gland",
    "Bile-duct",
    "Bladder",
    "Breast",
    "Cervix",
    "Colon",
    "Esophagus",
    "HeadNeck",
    "Kidney",
    "Liver",
    "Lung",
    "Ovarian",
    "Pancreatic",
    "Prostate",
    "Skin",
    "Stomach",
    "Testis",
    "Thyroid",
    "Uterus",
)

FOLDS: tuple[int, ...] = (1, 2, 3)
#: Patches per fold in the official release.
FOLD_SIZES: dict[int, int] = {1: 2656, 2: 2523, 3: 2722}
NUM_PATCHES: int = sum(FOLD_SIZES.values())  # 7901
PATCH_SIZE: int = 256
#: Microns per pixel of the patches (40x).
MICRONS_PER_PIXEL: float = 0.25


def patch_id(fold: int, index: int) -> str:
    """Stable identifier of a patch, e.g. ``patch_id(1, 0) == "fold1_0000"``."""
    return f"fold{fold}_{index:04d}"


def fold_dir_name(fold: int) -> str:
    """Folder a fold zip unpacks to, e.g. ``"Fold 1"`` (with a space)."""
    return f"Fold {fold}"


def raw_relpaths(fold: int) -> dict[str, str]:
    """Paths of a fold's three arrays relative to the folder that holds ``Fold k``."""
    root = f"{fold_dir_name(fold)}"
    return {
        "images": f"{root}/images/fold{fold}/images.npy",
        "types": f"{root}/images/fold{fold}/types.npy",
        "masks": f"{root}/masks/fold{fold}/masks.npy",
    }


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

DOWNLOAD_BASE_URL: str = "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke/"
#: Older host path of the same files.
LEGACY_DOWNLOAD_BASE_URL: str = "https://warwick.ac.uk/fac/sci/dcs/research/tia/data/pannuke/"
FOLD_ZIP_NAMES: dict[int, str] = {k: f"fold_{k}.zip" for k in FOLDS}
FOLD_ZIP_SHA256: dict[int, str] = {
    1: "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b",
    2: "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07",
    3: "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d",
}

# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

#: The reference split: all patch ids sorted, then scikit-learn's
#: ``train_test_split(ids, test_size=0.2, random_state=0)``.
REFERENCE_SPLIT_TEST_SIZE: float = 0.2
REFERENCE_SPLIT_SEED: int = 0
REFERENCE_SPLIT_SIZES: dict[str, int] = {"train": 6320, "validation": 1581}
#: The official 3-fold protocol: (train, validation, test) folds.
FOLD_PROTOCOL: tuple[tuple[int, int, int], ...] = ((1, 2, 3), (2, 1, 3), (3, 2, 1))

# --------------------------------------------------------------------------------------------
# Pre-processing of the reference model
# --------------------------------------------------------------------------------------------

#: RGB mean and std on the 0-255 scale.
IMAGE_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGE_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
REFERENCE_INPUT_SIZE: int = 512

# --------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------

#: RGB colour of each semantic label, indexed by label value: overlays, legends and the QuPath
#: class colour in GeoJSON (docs/instances.md, "Class names and colours").
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # background
    (230, 25, 75),  # neoplastic: red
    (60, 180, 75),  # inflammatory: green
    (0, 130, 200),  # connective / soft tissue: blue
    (255, 225, 25),  # dead: yellow
    (245, 130, 48),  # non-neoplastic epithelial: orange
)

# --------------------------------------------------------------------------------------------
# Licence and citations
# --------------------------------------------------------------------------------------------

LICENSE: str = "cc-by-nc-sa-4.0"
LICENSE_NAME: str = "CC BY-NC-SA 4.0"
LICENSE_URL: str = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
HOMEPAGE: str = DOWNLOAD_BASE_URL

CITATION: str = """\
@inproceedings{gamper2019pannuke,
  title     = {PanNuke: An Open Pan-Cancer Histology Dataset for Nuclei Instance Segmentation and Classification},
  author    = {Gamper, Jevgenij and Alemi Koohbanani, Navid and Benet, Ksenija and Khuram, Ali and Rajpoot, Nasir},
  booktitle = {Digital Pathology (ECDP 2019)},
  pages     = {11--19},
  year      = {2019},
  publisher = {Springer}
}

@article{gamper2020pannuke,
  title   = {PanNuke Dataset Extension, Insights and Baselines},
  author  = {Gamper, Jevgenij and Alemi Koohbanani, Navid and Benes, Ksenija and Graham, Simon and Jahanifar, Mostafa and Khurram, Syed Ali and Azam, Ayesha and Hewitt, Katherine and Rajpoot, Nasir},
  journal = {arXiv preprint arXiv:2003.10778},
  year    = {2020}
}
"""
