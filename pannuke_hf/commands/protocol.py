"""``pannuke-hf protocol``: PanNuke's official 3-fold protocol, end to end.

Examples::

    # train the three rows with train.py's arguments (a config file and/or flags), score each test fold
    pannuke-hf protocol --data-dir raw/ --output-dir runs/protocol configs/my-run.yaml --max_steps 20000
    # or score three checkpoints, one per row, on their test folds
    pannuke-hf protocol --data-dir raw/ --checkpoints row1/ row2/ row3/

The rows (train, validation, test folds) are (1, 2, 3), (2, 1, 3) and (3, 2, 1)
(``constants.FOLD_PROTOCOL``, ``--split_scheme fold1/fold2/fold3``). Each row is trained with
:func:`pannuke_hf.training.run.run` and evaluated on its test fold; the command prints each row's
scores and their mean and standard deviation over the three test folds (mIoU / mDice, and mPQ /
bPQ / F1_d whenever the evaluation reports nucleus-level scores), and writes ``protocol.json`` and
``protocol.md``. The standard deviation is numpy's default (population, ddof=0).

Arguments not listed in ``--help`` are passed to train.py unchanged (after the optional
configuration file); ``--data_dir``, ``--split_scheme``, ``--eval_split test`` and ``--output_dir``
are set per row. Model selection on the test fold (``--load_best_model_at_end``) is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    return parser


def row_argv(train_args: Sequence[str], data_dir: str, row: int, output_dir: Path) -> list[str]:
    """train.py arguments of protocol row ``row`` (1-3): the user's, then the row's own flags."""
    return [
        *train_args,
        "--data_dir",
        str(data_dir),
        "--split_scheme",
        f"fold{row}",
        "--eval_split",
        "test",
        "--output_dir",
        str(output_dir),
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


def protocol_table(summary: Mapping[str, Any]) -> str:
    """Markdown: one line per score, the three test folds, then mean and std (fractions, 4 decimals)."""
    from ..constants import FOLD_PROTOCOL

    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.4f}"

    heads = [f"row {k + 1} ({'/'.join(map(str, row))})" for k, row in enumerate(FOLD_PROTOCOL)]
    lines = ["| Score | " + " | ".join(heads) + " | mean | std |", "|:---|" + "---:|" * 5]
    for key, item in summary.items():
        cells = [fmt(v) for v in item["values"]] + [fmt(item["mean"]), fmt(item["std"])]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    note = "Rows: (train / validation / test) folds; mean and std over the three test folds."
    return note + "\n\n" + "\n".join(lines) + "\n"


def train_rows(data_dir: str, output_dir: Path, train_args: Sequence[str]) -> list[dict[str, float]]:
    """Train and test the three rows with train.py; returns each row's test scores."""
    from ..training.run import run

    rows = []
    for row in (1, 2, 3):
        print(f"\n=== protocol row {row}: --split_scheme fold{row} ===", flush=True)
        metrics = run(row_argv(train_args, data_dir, row, output_dir / f"row{row}"))
        if not metrics:
            raise ValueError("train.py returned no evaluation: do not pass --do_eval false to the protocol")
        rows.append(row_scores(metrics))
    return rows


def score_checkpoints(
    data_dir: str, output_dir: Path, checkpoints: Sequence[str], args: Any
) -> list[dict[str, float]]:
    """Score checkpoint k on row k's test fold; returns each row's scores."""
    from ..training.evaluation import evaluate_checkpoint

    rows = []
    for row, checkpoint in enumerate(checkpoints, start=1):
        print(f"\n=== protocol row {row}: {checkpoint} on its test fold ===", flush=True)
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
        )
        rows.append(row_scores(metrics))
    return rows


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
    """Run ``pannuke-hf protocol``; returns 0, or 2 with a message on bad input."""
    parser = build_parser()
    args, train_args = parser.parse_known_args(argv)
    if args.checkpoints and train_args:
        parser.error(f"with --checkpoints nothing is trained: unexpected arguments {train_args}")
    if any(a.startswith("--load_best_model_at_end") for a in train_args):
        parser.error("--load_best_model_at_end would select the model on the test fold: not allowed here")
    owned = ("--data_dir", "--split_scheme", "--eval_split", "--output_dir")
    clash = [a for a in train_args if a.split("=")[0] in owned]
    if clash:
        parser.error(f"{clash} are set by the protocol per row (use --data-dir / --output-dir)")
    if not Path(args.data_dir).is_dir():
        print(f"pannuke-hf protocol: error: --data-dir {args.data_dir!r} is not a folder", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir)
    try:
        if args.checkpoints:
            rows = score_checkpoints(args.data_dir, output_dir, args.checkpoints, args)
        else:
            rows = train_rows(args.data_dir, output_dir, train_args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        if os.environ.get("PANNUKE_HF_TRACEBACK"):
            raise
        print(f"pannuke-hf protocol: error: {error}", file=sys.stderr)
        return 2
    summary = summarise_protocol(rows)
    table = protocol_table(summary)
    print("\n## 3-fold protocol\n\n" + table)
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "rows": [{"row": k + 1, "scores": row} for k, row in enumerate(rows)],
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


if __name__ == "__main__":
    sys.exit(main())
