"""The official nucleus-level tables (overall, per class, per tissue) as Markdown, JSON and CSV.

All take the dict of :meth:`~pannuke_hf.metrics.pq.PanNukeInstanceMetrics.compute`. The Markdown
tables (printed and ``scores.md``) show scores in percent with two decimals, the unit in every
header, as every table of the package does; JSON and CSV keep fractions in [0, 1] (the PanNuke
papers' form). ``n/a`` marks an undefined value.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...constants import TISSUES, full_class_name

#: Rows of the overall table: (label, key).
OVERALL_ROWS: tuple[tuple[str, str], ...] = (
    ("mPQ (tissue-averaged)", "mPQ"),
    ("bPQ (tissue-averaged)", "bPQ"),
    ("mPQ (image-averaged)", "mPQ_image"),
    ("bPQ (image-averaged)", "bPQ_image"),
    ("DQ (binary, tissue-averaged)", "DQ"),
    ("SQ (binary, tissue-averaged)", "SQ"),
    ("F1 detection", "F1_detection"),
    ("precision detection", "precision_detection"),
    ("recall detection", "recall_detection"),
)


def _fmt(value: Any) -> str:
    """A fraction as percent with two decimals (``0.8554`` -> ``85.54``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.2f}"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def class_names_of(results: Mapping[str, Any]) -> list[str]:
    """The class names of a results dict, in order (from its ``PQ_<class>`` keys)."""
    return [key[3:] for key in results if key.startswith("PQ_")]


def _tissue_order(per_tissue: Mapping[str, Any]) -> list[str]:
    known = [t for t in TISSUES if t in per_tissue]
    return known + sorted(t for t in per_tissue if t not in TISSUES)


def overall_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"metric", "key", "value"}]`` of the overall table (rows absent from ``results`` skipped)."""
    return [
        {"metric": label, "key": key, "value": _number(results[key])}
        for label, key in OVERALL_ROWS
        if key in results
    ]


def per_class_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"class", "PQ", "DQ", "SQ", "F1"}]``: class scores (PQ/DQ/SQ image-averaged, F1 pooled).

    ``class`` is the full class name (``constants.full_class_name``: "non-neoplastic epithelial"),
    as in every table a person reads; the result keys keep the identifier (``PQ_epithelial``).
    """
    return [
        {
            "class": full_class_name(name),
            "PQ": _number(results[f"PQ_{name}"]),
            "DQ": _number(results.get(f"DQ_{name}")),
            "SQ": _number(results.get(f"SQ_{name}")),
            "F1": _number(results.get(f"F1_{name}")),
        }
        for name in class_names_of(results)
    ]


def per_tissue_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"tissue", "images", "mPQ", "bPQ", "DQ", "SQ"}]`` in PanNuke's tissue order."""
    per_tissue = results.get("per_tissue", {})
    return [
        {
            "tissue": tissue,
            "images": int(per_tissue[tissue]["images"]),
            **{key: _number(per_tissue[tissue][key]) for key in ("mPQ", "bPQ", "DQ", "SQ")},
        }
        for tissue in _tissue_order(per_tissue)
    ]


def _markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|:---|" + "---:|" * (len(columns) - 1)]
    for row in rows:
        cells = [str(row[columns[0]])]
        for column in columns[1:]:
            value = row[column]
            cells.append(str(value) if isinstance(value, int) else _fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def instance_results_tables(results: Mapping[str, Any]) -> str:
    """The three official tables as Markdown: overall, per class, per tissue.

    Args:
        results: the dict of :meth:`PanNukeInstanceMetrics.compute`.

    Returns:
        Markdown text: ``## Overall`` (mPQ / bPQ tissue- and image-averaged, DQ, SQ, F1_d),
        ``## Per class`` (PQ, DQ, SQ, F1 per class) and ``## Per tissue`` (images, mPQ, bPQ, DQ, SQ).
    """
    parts = [
        f"## Overall ({int(results.get('num_images', 0))} images, {int(results.get('num_tissues', 0))} tissues)",
        "",
        _markdown(overall_rows(results), ("metric", "value"), ("Metric", "Value (%)")),
        "",
        "## Per class (PQ, DQ, SQ averaged over images; F1 from pooled counts)",
        "",
        _markdown(
            per_class_rows(results),
            ("class", "PQ", "DQ", "SQ", "F1"),
            ("Class", "PQ (%)", "DQ (%)", "SQ (%)", "F1 (%)"),
        ),
        "",
        "## Per tissue (averaged over the tissue's images)",
        "",
        _markdown(
            per_tissue_rows(results),
            ("tissue", "images", "mPQ", "bPQ", "DQ", "SQ"),
            ("Tissue", "Images", "mPQ (%)", "bPQ (%)", "DQ (%)", "SQ (%)"),
        ),
    ]
    return "\n".join(parts) + "\n"


def instance_results_to_json(
    results: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON-ready document (NaN becomes ``null``): ``summary`` (every float), ``overall``,
    ``per_class``, ``per_tissue``, ``counts``, ``num_images``, plus ``extra``."""
    summary = {
        key: _number(value)
        for key, value in results.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and key not in ("num_images", "num_tissues")
    }
    document = {
        "num_images": int(results.get("num_images", 0)),
        "num_tissues": int(results.get("num_tissues", 0)),
        "summary": summary,
        "overall": overall_rows(results),
        "per_class": per_class_rows(results),
        "per_tissue": per_tissue_rows(results),
        "counts": results.get("counts", {}),
    }
    document.update(extra or {})
    return document


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return path


def save_instance_results(
    results: Mapping[str, Any],
    out_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
    image_table: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write the tables: ``scores.json``, ``scores.md``, ``overall.csv``, ``per_class.csv``,
    ``per_tissue.csv`` (and ``per_image.csv`` given ``image_table``) into ``out_dir``.

    Returns:
        ``{"json", "markdown", "overall", "per_class", "per_tissue"[, "per_image"]}`` -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "scores.json", "markdown": out / "scores.md"}
    document = instance_results_to_json(results, extra)
    paths["json"].write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text("# Nucleus-level scores\n\n" + instance_results_tables(results))
    paths["overall"] = _write_csv(out / "overall.csv", overall_rows(results), ("metric", "key", "value"))
    paths["per_class"] = _write_csv(
        out / "per_class.csv", per_class_rows(results), ("class", "PQ", "DQ", "SQ", "F1")
    )
    paths["per_tissue"] = _write_csv(
        out / "per_tissue.csv", per_tissue_rows(results), ("tissue", "images", "mPQ", "bPQ", "DQ", "SQ")
    )
    if image_table is not None:
        rows = [
            {k: (_number(v) if isinstance(v, float) else v) for k, v in row.items()} for row in image_table
        ]
        columns = list(rows[0]) if rows else ["index", "tissue", "bPQ", "mPQ"]
        paths["per_image"] = _write_csv(out / "per_image.csv", rows, columns)
    return paths


__all__ = [
    "OVERALL_ROWS",
    "instance_results_tables",
    "instance_results_to_json",
    "overall_rows",
    "per_class_rows",
    "per_tissue_rows",
    "save_instance_results",
]
