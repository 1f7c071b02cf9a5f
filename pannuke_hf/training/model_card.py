"""The model card (``README.md``) written next to a trained checkpoint and pushed to the Hub."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from ..constants import CITATION, HOMEPAGE, LICENSE, LICENSE_NAME, LICENSE_URL

TAGS: tuple[str, ...] = (
    "image-segmentation",
    "semantic-segmentation",
    "pathology",
    "histology",
    "pannuke",
    "unet-fcn",
)
DATASET_ID: str = "pannuke"
DATASET_NAME: str = "PanNuke"
#: model-index dataset of a run on generated data (the demo): never PanNuke's name.
SYNTHETIC_DATASET_ID: str = "pannuke-hf-generated"
SYNTHETIC_DATASET_NAME: str = "Generated PanNuke-format data (pannuke-hf make-synthetic)"
#: Tag of a run on generated data: says so in the YAML header even without evaluation results
#: (the demo page and ``pannuke-hf space`` read it, see :func:`training_data_from_card`).
SYNTHETIC_DATA_TAG: str = "synthetic-data"

#: Training hyper-parameters shown in the card (never tokens or paths to private data).
CARD_HYPERPARAMETERS: tuple[str, ...] = (
    "learning_rate",
    "optimizer",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "min_lr",
    "poly_power",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "world_size",
    "seed",
    "bf16",
    "fp16",
    "sync_bn",
)


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}"


def card_metadata(
    model_name: str,
    results: Mapping[str, Any] | None,
    split: str,
    dataset_id: str = DATASET_ID,
    synthetic_data: bool = False,
) -> ModelCardData:
    """The YAML header: licence, dataset, tags, library and the model-index with mIoU / mDice.

    Args:
        model_name: name in the model-index.
        results: the document of ``pannuke_hf.metrics.results_to_json`` (``summary`` fractions), or None.
        split: evaluated split name.
        dataset_id: dataset identifier (Hub id of the PanNuke dataset used).
        synthetic_data: the run used generated data: the model-index names that data, not PanNuke.

    Returns:
        A ``huggingface_hub.ModelCardData``.
    """
    if synthetic_data:
        dataset_id, dataset_name = SYNTHETIC_DATASET_ID, SYNTHETIC_DATASET_NAME
    else:
        dataset_name = DATASET_NAME
    eval_results = None
    if results and results.get("summary"):
        eval_results = [
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic segmentation",
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=name,
                metric_value=round(100 * float(results["summary"][key]), 2),
            )
            for metric_type, name, key in (("mean_iou", "mIoU", "mIoU"), ("dice", "mDice", "mDice"))
            if results["summary"].get(key) is not None
        ]
        # Nucleus-level scores (training.evaluation.nuclei_results), when evaluation computed them.
        nuclei = results.get("nuclei") or {}
        eval_results += [
            EvalResult(
                task_type="image-segmentation",
                task_name="Nucleus instance segmentation",
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=name,
                metric_value=round(100 * float(nuclei[name]), 2),
            )
            for metric_type, name in (("mpq", "mPQ"), ("bpq", "bPQ"), ("f1", "F1_d"))
            if nuclei.get(name) is not None
        ]
    return ModelCardData(
        model_name=model_name,
        license=LICENSE,
        datasets=None if synthetic_data else [dataset_id],
        tags=[*TAGS, SYNTHETIC_DATA_TAG] if synthetic_data else list(TAGS),
        library_name="transformers",
        pipeline_tag="image-segmentation",
        eval_results=eval_results or None,
    )


def hyperparameters(args: Any) -> dict[str, Any]:
    """The card's training configuration from ``TrainingArguments`` (selected, token-free fields)."""
    values = {}
    for name in CARD_HYPERPARAMETERS:
        if hasattr(args, name):
            value = getattr(args, name)
            values[name] = value.value if hasattr(value, "value") else value
    return values


def render_model_card(
    model_name: str,
    args: Any = None,
    results: Mapping[str, Any] | None = None,
    results_markdown: str | None = None,
    split: str = "validation",
    split_scheme: str = "reference",
    image_size: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    dataset_id: str = DATASET_ID,
    synthetic_data: bool = False,
) -> str:
    """The full model card text: YAML header + body (configuration, results, intended use, citation).

    Args:
        model_name: repository / model name.
        args: the run's ``TrainingArguments`` (for the hyper-parameters), or None.
        results: ``results_to_json`` document of the final evaluation, or None.
        results_markdown: the results table as Markdown.
        split: evaluated split.
        split_scheme: ``reference`` or ``foldK``.
        image_size: model input side.
        model_config: a few architecture fields to show.
        dataset_id: dataset identifier.
        synthetic_data: the run used generated data (the demo): said loudly in the card.

    Returns:
        The Markdown text.
    """
    meta = card_metadata(model_name, results, split, dataset_id, synthetic_data=synthetic_data)
    data_name = SYNTHETIC_DATASET_NAME if synthetic_data else DATASET_NAME
    lines = ["---", meta.to_yaml().strip(), "---", "", f"# {model_name}", ""]
    lines.append(
        "A UNet-FCN (the mmsegmentation `fcn_unet_s5-d16` architecture) for semantic segmentation of "
        f"nuclei in H&E histology patches, trained on {'generated PanNuke-format data' if synthetic_data else 'PanNuke'} with "
        "the pannuke-hf toolkit (`transformers.Trainer`)."
    )
    lines.append("")
    if synthetic_data:
        lines += ["> **Trained on generated PanNuke-format data (demo run).** Not a pathology model.", ""]
    lines += [
        "Labels (value: class): 0 background, 1 neoplastic, 2 inflammatory, 3 connective / soft tissue, "
        "4 dead, 5 non-neoplastic epithelial.",
        "",
        "## Usage",
        "",
        "```python",
        "import pannuke_hf  # registers the UNet-FCN classes",
        "from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation",
        "",
        f'processor = AutoImageProcessor.from_pretrained("{model_name}")',
        f'model = AutoModelForSemanticSegmentation.from_pretrained("{model_name}")',
        'inputs = processor(images=image, return_tensors="pt")',
        "label_map = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[image.size[::-1]])[0]",
        "```",
        "",
        "## Training configuration",
        "",
        f"- data: {data_name}, split scheme `{split_scheme}`, evaluated on `{split}`",
    ]
    if image_size:
        lines.append(f"- input size: {image_size}x{image_size} (patches resized), reference augmentations")
    for key, value in (model_config or {}).items():
        lines.append(f"- model `{key}`: {value}")
    if args is not None:
        for key, value in hyperparameters(args).items():
            lines.append(f"- `{key}`: {value}")
    lines += ["", "## Results", ""]
    if results_markdown:
        lines += [f"On the `{split}` split (percent):", "", results_markdown.strip(), ""]
    else:
        lines += ["No evaluation was run.", ""]
    if results and results.get("summary"):
        s = results["summary"]
        lines += [f"mIoU {_percent(s.get('mIoU'))}, mDice {_percent(s.get('mDice'))}.", ""]
    lines += [
        "Reference (mmsegmentation, 512x512, batch 16, 20k iterations, validation split): "
        "mIoU / mDice 76.48 / 84.68 (lr 0.01), 61.06 / 63.69 (lr 0.001), 58.87 / 62.42 (lr 0.0001).",
        "",
        "## Intended use and limitations",
        "",
        "Research on nuclei segmentation and classification in H&E histology at 40x (about 0.25 um/pixel). "
        "Not a medical device; not for diagnosis. Semantic maps only: touching nuclei are not separated "
        "into instances.",
        "",
        "## License",
        "",
        f"The weights derive from PanNuke and inherit its licence, [{LICENSE_NAME}]({LICENSE_URL}): "
        "non-commercial use, attribution, share-alike.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION.strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(output_dir: str | Path, args: Any = None, **info: Any) -> Path:
    """Write ``README.md`` into ``output_dir``; ``info`` goes to :func:`render_model_card`.

    Args:
        output_dir: checkpoint folder.
        args: the run's ``TrainingArguments``.
        **info: ``model_name`` (default: the hub model id or the folder name), ``results``, ...

    Returns:
        The path of the card.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hub_id = getattr(args, "hub_model_id", None) if args is not None else None
    model_name = info.pop("model_name", None) or hub_id or output_dir.name
    path = output_dir / "README.md"
    path.write_text(render_model_card(model_name, args, **info))
    return path


# ---------------------------------------------------------------------------------------------
# Reading a card back: what the checkpoint was trained on (the demo page, `pannuke-hf space`)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint was trained on, as its model card's YAML header says.

    Attributes:
        generated: trained on generated PanNuke-format data (the demo run), not on tissue.
        datasets: the header's ``datasets`` (Hub dataset ids; ``pannuke`` for PanNuke).
    """

    generated: bool = False
    datasets: tuple[str, ...] = ()

    @property
    def pannuke(self) -> bool:
        """Trained on PanNuke: a listed dataset is ``pannuke`` (or ``owner/pannuke``)."""
        return not self.generated and any(_is_pannuke(name) for name in self.datasets)

    def markdown(self) -> str:
        """One Markdown sentence for a page: what the model was trained on."""
        if self.generated:
            return (
                "Model trained on generated PanNuke-format data (`pannuke-hf make-synthetic`), not on "
                "tissue: a demonstration, not a pathology model."
            )
        names = [
            f"[PanNuke]({HOMEPAGE}) (data licence [{LICENSE_NAME}]({LICENSE_URL}): non-commercial use)"
            if _is_pannuke(name)
            else (f"[`{name}`](https://huggingface.co/datasets/{name})" if "/" in name else f"`{name}`")
            for name in self.datasets
        ]
        return f"Model trained on {', '.join(names)}."


def _is_pannuke(name: str) -> bool:
    return name.rsplit("/", 1)[-1].lower() == DATASET_ID


def training_data_from_card(card_text: str) -> TrainingData | None:
    """What a model card says the checkpoint was trained on; None when it says nothing.

    Reads the YAML header only: the :data:`SYNTHETIC_DATA_TAG` tag or a model-index result on
    :data:`SYNTHETIC_DATASET_ID` (cards written before the tag) mean generated data; otherwise
    the ``datasets`` list. A card without a header, or a header without either, gives None.
    """
    import yaml

    if not card_text.startswith("---"):
        return None
    parts = card_text.split("---", 2)
    if len(parts) < 3:
        return None
    try:
        header = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(header, dict):
        return None
    tags = header.get("tags") or []
    result_datasets = [
        (result.get("dataset") or {}).get("type")
        for entry in header.get("model-index") or []
        if isinstance(entry, dict)
        for result in entry.get("results") or []
        if isinstance(result, dict)
    ]
    if SYNTHETIC_DATA_TAG in tags or SYNTHETIC_DATASET_ID in result_datasets:
        return TrainingData(generated=True)
    datasets = header.get("datasets") or []
    if isinstance(datasets, str):
        datasets = [datasets]
    datasets = tuple(str(name) for name in datasets if name)
    return TrainingData(datasets=datasets) if datasets else None
