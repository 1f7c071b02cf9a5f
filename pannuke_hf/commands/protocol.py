"""``pannuke-hf protocol``: PanNuke's official 3-fold protocol, end to end.

Examples::

    # train the three rows with train.py's arguments (a config file and/or flags), score each test fold
    pannuke-hf protocol --data-dir raw/ --output-dir runs/protocol configs/my-run.yaml --max_steps 20000
    # or score three checkpoints, one per row, on their test folds
    pannuke-hf protocol --data-dir raw/ --checkpoints row1/ row2/ row3/

The rows (train, validation, test folds) are (1, 2, 3), (2, 1, 3) and (3, 2, 1)
(``constants.FOLD_PROTOCOL``, ``--split_scheme fold1/fold2/fold3``). Each row is trained with
:func:`pannuke_hf.training.run.run` and evaluated on its test fold; the command prints each row's
scores and their mean and standard deviation over the three test folds (mIoU / mDice and, by
default, the protocol's own nucleus scores mPQ / bPQ / F1_d, with the post-processing named in
the table), and writes ``protocol.json`` and ``protocol.md``. Printed tables are in percent, the
JSON in fractions. The standard deviation is numpy's default (population, ddof=0).

Arguments not listed in ``--help`` are passed to train.py unchanged (after the optional
configuration file); ``--data_dir``, ``--split_scheme``, ``--eval_split test``, ``--output_dir``,
``--synthetic_data false`` (the rows read ``--data-dir``) and the nucleus options
(``--instance_metrics``, ``--instance_postprocess``, from ``--nuclei`` / ``--nuclei-from``) are set
per row. Model selection on the test fold (``--load_best_model_at_end``) is refused, and so are
``--checkpoints`` whose recorded training split is not their row's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

#: Scores summarised over the three test folds, in table order (those present in every row).
PROTOCOL_KEYS: tuple[str, ...] = (
    "mean_iou",
    "mean_dice",
    "mPQ",
    "bPQ",
    "mPQ_image",
    "bPQ_image",
    "F1_detection",
)
_PREFIXES: tuple[str, ...] = ("eval_", "test_")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``pannuke-hf protocol`` (everything else goes to train.py)."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf protocol",
        description=(
            "Run PanNuke's 3-fold protocol: (train, validation, test) folds (1, 2, 3), (2, 1, 3), (3, 2, 1). "
            "Trains each row with train.py's arguments (unknown arguments are passed on) or scores three "
            "--checkpoints on their test folds, then prints the mean and std over the three test folds."
        ),
    )
    parser.add_argument("--data-dir", required=True, help="folder with the raw folds (Fold k/ or fold_k.zip)")
    parser.add_argument("--output-dir", default="protocol", help="one sub-folder per row + protocol.json/.md")
    parser.add_argument(
        "--checkpoints",
        nargs=3,
        metavar=("ROW1", "ROW2", "ROW3"),
        help="score these checkpoints (trained on rows 1, 2, 3) instead of training",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="with --checkpoints: images per forward pass"
    )
    parser.add_argument("--image-size", type=int, default=None, help="with --checkpoints: model input side")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="with --checkpoints: first N test images"
    )
    parser.add_argument("--cache-dir", default=None, help="with --checkpoints: datasets cache folder")
    parser.add_argument("--cpu", action="store_true", help="with --checkpoints: stay on the CPU")
    parser.add_argument(
        "--nuclei",
        choices=["yes", "no"],
        default="yes",
        help="score nuclei (mPQ, bPQ, F1_d: the protocol's headline numbers; default yes)",
    )
    parser.add_argument(
        "--nuclei-from",
        choices=["auto", "hv", "watershed", "components"],
        default="auto",
        help="how nuclei are made: the hv head (auto when the model has it), else the semantic map split "
        "by a watershed (auto otherwise), or plain connected components",
    )
    return parser


def row_argv(
    train_args: Sequence[str],
    data_dir: str,
    row: int,
    output_dir: Path,
    nuclei: bool = True,
    nuclei_from: str = "auto",
) -> list[str]:
    """train.py arguments of protocol row ``row`` (1-3): the user's, then the row's own flags."""
    return [
        *train_args,
        "--data_dir",
        str(data_dir),
        "--synthetic_data",
        "false",
        "--split_scheme",
        f"fold{row}",
        "--eval_split",
        "test",
        "--output_dir",
        str(output_dir),
        "--instance_metrics",
        "true" if nuclei else "false",
        "--instance_postprocess",
        nuclei_from,
    ]


def row_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The floats of an evaluation's metrics, without Trainer's ``eval_`` / ``test_`` prefix."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = float(value)
    return out


def summarise_protocol(
    rows: Sequence[Mapping[str, float]], keys: Sequence[str] = PROTOCOL_KEYS
) -> dict[str, Any]:
    """Mean and standard deviation over the three test folds.

    Args:
        rows: the three rows' scores (as :func:`row_scores` returns them).
        keys: the scores to summarise; those missing from any row are left out.

    Returns:
        ``{key: {"values": [row1, row2, row3], "mean": ..., "std": ...}}`` (std with ddof=0;
        NaN values propagate, so an undefined score in one row makes the mean undefined).
    """
    if len(rows) != 3:
        raise ValueError(f"the protocol has 3 rows, got {len(rows)}")
    summary: dict[str, Any] = {}
    for key in keys:
        if not all(key in row for row in rows):
            continue
        values = [float(row[key]) for row in rows]
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
        summary[key] = {"values": values, "mean": mean, "std": std}
    return summary


#: Column heading of each summarised score in the printed table.
SCORE_HEADINGS: dict[str, str] = {
    "mean_iou": "mIoU",
    "mean_dice": "mDice",
    "mPQ": "mPQ",
    "bPQ": "bPQ",
    "mPQ_image": "mPQ (image avg)",
    "bPQ_image": "bPQ (image avg)",
    "F1_detection": "F1_d",
}


def protocol_table(summary: Mapping[str, Any], nuclei_from: Sequence[str | None] | None = None) -> str:
    """Markdown: one line per protocol row, then mean and std; one column per score, in percent.

    Args:
        summary: :func:`summarise_protocol`'s output (fractions).
        nuclei_from: the post-processing that made each row's nuclei (named above the table).
    """
    from ..constants import FOLD_PROTOCOL
    from ..metrics.trainer import describe_instance_mode

    def fmt(value: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"

    keys = list(summary)
    heads = [f"{SCORE_HEADINGS.get(key, key)} (%)" for key in keys]
    lines = ["| Row (train / validation / test folds) | " + " | ".join(heads) + " |"]
    lines.append("|:---|" + "---:|" * len(keys))
    for k, folds in enumerate(FOLD_PROTOCOL):
        cells = [fmt(summary[key]["values"][k]) for key in keys]
        lines.append(f"| row {k + 1} ({' / '.join(map(str, folds))}) | " + " | ".join(cells) + " |")
    for name in ("mean", "std"):
        lines.append(f"| **{name}** | " + " | ".join(fmt(summary[key][name]) for key in keys) + " |")
    notes = ["Scores in percent on each row's test fold; mean and std (population) over the three rows."]
    modes = sorted({mode for mode in (nuclei_from or []) if mode})
    if any(key in summary for key in ("mPQ", "bPQ", "F1_detection")):
        made = (
            ", ".join(describe_instance_mode(mode) for mode in modes) if modes else "unknown post-processing"
        )
        notes.append(f"Nuclei from {made}; mPQ / bPQ per image, then averaged over tissues; F1_d pooled.")
    return " ".join(notes) + "\n\n" + "\n".join(lines) + "\n"


def _nuclei_from(metrics: Mapping[str, Any]) -> str | None:
    """The post-processing that made an evaluation's nuclei (recorded in its results document)."""
    nuclei = (metrics.get("results") or {}).get("nuclei") or {}
    return nuclei.get("nuclei_from")


def train_rows(
    data_dir: str, output_dir: Path, train_args: Sequence[str], nuclei: bool = True, nuclei_from: str = "auto"
) -> tuple[list[dict[str, float]], list[str | None]]:
    """Train and test the three rows with train.py; returns each row's test scores and nuclei source."""
    from ..training.run import run

    rows, modes = [], []
    for row in (1, 2, 3):
        print(f"\n=== protocol row {row}: --split_scheme fold{row} ===", flush=True)
        metrics = run(row_argv(train_args, data_dir, row, output_dir / f"row{row}", nuclei, nuclei_from))
        if not metrics:
            raise ValueError("train.py returned no evaluation: do not pass --do_eval false to the protocol")
        rows.append(row_scores(metrics))
        modes.append(_nuclei_from(metrics))
    return rows, modes


def check_train_args(args: Any, train_args: Sequence[str], output_dir: Path) -> None:
    """Parse the rows' train.py arguments before any work (their errors are usage errors, exit 2).

    Raises:
        UsageError: arguments train.py refuses, or ``--nuclei-from hv`` for a model without the hv
            head (neither ``--instance_head hv`` nor a ``--model_name_or_path`` that has it).
    """
    from ..training.arguments import parse_arguments
    from ._common import read_model_config

    argv = row_argv(train_args, args.data_dir, 1, output_dir / "row1", args.nuclei == "yes", args.nuclei_from)
    try:
        _, model_args, _ = parse_arguments(argv)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"train.py arguments: {err}") from err
    if args.nuclei == "yes" and args.nuclei_from == "hv":
        head = model_args.instance_head
        if head is None and model_args.model_name_or_path:
            head = (read_model_config(model_args.model_name_or_path) or {}).get("instance_head")
        if head != "hv":
            raise UsageError(
                "--nuclei-from hv needs the hv instance head: add --instance_head hv, or use --nuclei-from "
                "watershed or components"
            )


def check_checkpoints(checkpoints: Sequence[str], nuclei: bool, nuclei_from: str) -> list[dict | None]:
    """Check the three checkpoints before any data is built; returns each one's training record.

    Raises:
        InputError: a checkpoint that does not exist or holds no model (exit 1).
        UsageError: checkpoint k trained on another split than row k's (its test fold would hold
            its training patches, e.g. checkpoints given in the wrong order), or ``--nuclei-from hv``
            for a checkpoint without the hv head (exit 2).
    """
    from ..data.splits import read_training_record, split_overlaps_training
    from ._common import check_model_source, read_model_config
    from .evaluate import nuclei_options

    records = []
    for row, checkpoint in enumerate(checkpoints, start=1):
        check_model_source(checkpoint, f"--checkpoints (row {row})")
        config = read_model_config(checkpoint) or {}
        record = config.get("training_data") if isinstance(config.get("training_data"), dict) else None
        record = record or read_training_record(checkpoint)
        if record and record["split_scheme"] != f"fold{row}":
            leak = split_overlaps_training(record["split_scheme"], f"fold{row}", "test")
            raise UsageError(
                f"--checkpoints: row {row}'s checkpoint {checkpoint} was trained with split scheme "
                f"{record['split_scheme']}, not fold{row}"
                + (f": row {row}'s test fold holds its training patches" if leak else "")
                + ". Give the checkpoints in row order (trained with --split_scheme fold1, fold2, fold3)"
            )
        if record is None:
            print(
                f"note: {checkpoint} records no training split; make sure it was trained on row {row} "
                f"(--split_scheme fold{row})",
                file=sys.stderr,
            )
        nuclei_options(
            "yes" if nuclei else "no", nuclei_from if nuclei else "auto", config.get("instance_head")
        )
        records.append(record)
    return records


def score_checkpoints(
    data_dir: str, output_dir: Path, checkpoints: Sequence[str], args: Any
) -> tuple[list[dict[str, float]], list[str | None]]:
    """Score checkpoint k on row k's test fold; returns each row's scores and nuclei source."""
    from ..training.evaluation import evaluate_checkpoint
    from ._common import read_model_config
    from .evaluate import nuclei_options

    nuclei = args.nuclei == "yes"
    records = check_checkpoints(checkpoints, nuclei, args.nuclei_from)
    rows, modes = [], []
    for row, (checkpoint, record) in enumerate(zip(checkpoints, records), start=1):
        print(f"\n=== protocol row {row}: {checkpoint} on its test fold ===", flush=True)
        head = (read_model_config(checkpoint) or {}).get("instance_head")
        score_nuclei, mode = nuclei_options(args.nuclei, args.nuclei_from if nuclei else "auto", head)
        metrics = evaluate_checkpoint(
            checkpoint,
            data_dir,
            split="test",
            split_scheme=f"fold{row}",
            out_dir=output_dir / f"row{row}",
            batch_size=args.batch_size,
            image_size=args.image_size,
            max_samples=args.max_samples,
            cache_dir=args.cache_dir,
            use_cpu=args.cpu,
            instance_metrics=score_nuclei,
            instance_mode=mode,
            void_label=int((record or {}).get("void_label", 0)),
        )
        rows.append(row_scores(metrics))
        modes.append(_nuclei_from(metrics))
    return rows, modes


def _json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf protocol``; returns 0. Errors are raised (usage -> 2, failed work -> 1) and
    reported by :func:`pannuke_hf.cli.main`."""
    parser = build_parser()
    args, train_args = parser.parse_known_args(argv)
    if args.checkpoints and train_args:
        parser.error(f"with --checkpoints nothing is trained: unexpected arguments {train_args}")
    if any(a.startswith("--load_best_model_at_end") for a in train_args):
        parser.error("--load_best_model_at_end would select the model on the test fold: not allowed here")
    owned = {
        "--data_dir": "use --data-dir",
        "--split_scheme": "set per row",
        "--eval_split": "set per row",
        "--output_dir": "use --output-dir",
        "--synthetic_data": "the rows read --data-dir; write generated data with `pannuke-hf make-synthetic`",
        "--instance_metrics": "use --nuclei",
        "--instance_postprocess": "use --nuclei-from",
    }
    clash = [a for a in train_args if a.split("=")[0] in owned]
    if clash:
        hints = "; ".join(f"{a.split('=')[0]}: {owned[a.split('=')[0]]}" for a in clash)
        parser.error(f"{clash} are set by the protocol per row ({hints})")
    if args.nuclei == "no" and args.nuclei_from != "auto":
        parser.error(f"--nuclei-from {args.nuclei_from} scores nuclei: it does not go with --nuclei no")
    from ._common import check_data_dir

    check_data_dir(args.data_dir)
    output_dir = Path(args.output_dir)
    if not args.checkpoints:
        check_train_args(args, train_args, output_dir)
    if args.checkpoints:
        rows, modes = score_checkpoints(args.data_dir, output_dir, args.checkpoints, args)
    else:
        rows, modes = train_rows(
            args.data_dir, output_dir, train_args, args.nuclei == "yes", args.nuclei_from
        )
    summary = summarise_protocol(rows)
    table = protocol_table(summary, modes)
    print("\n## 3-fold protocol\n\n" + table)
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "units": "fractions in [0, 1] (the printed table and protocol.md: percent)",
        "rows": [
            {"row": k + 1, "scores": row, "nuclei_from": mode}
            for k, (row, mode) in enumerate(zip(rows, modes))
        ],
        "summary": summary,
        "checkpoints": list(args.checkpoints) if args.checkpoints else None,
        "train_args": None if args.checkpoints else list(train_args),
    }
    (output_dir / "protocol.json").write_text(
        json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n"
    )
    (output_dir / "protocol.md").write_text("# PanNuke 3-fold protocol\n\n" + table)
    print(f"wrote {output_dir / 'protocol.json'} and {output_dir / 'protocol.md'}")
    return 0


if __name__ == "__main__":  # through the dispatcher: its error handling and exit codes
    from ..cli import main as cli_main

    sys.exit(cli_main(["protocol", *sys.argv[1:]]))
