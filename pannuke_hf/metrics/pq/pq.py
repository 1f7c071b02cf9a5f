# Copyright 2026 The pannuke-hf authors. Licensed under the Apache License, Version 2.0.
"""The ``evaluate`` metric: PanNuke's official nucleus-level scores (PQ, mPQ, bPQ, DQ, SQ, F1).

Load it offline with ``evaluate.load(pannuke_hf.metrics.PANOPTIC_QUALITY_PATH)`` (this folder) or
on this file. The computation is :class:`pannuke_hf.metrics.pq.PanNukeInstanceMetrics` (imported
from the installed package, so the metric needs ``pannuke_hf``); for large evaluation sets use
that accumulator directly (evaluate stores every input in an Arrow cache first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

from pannuke_hf.metrics.pq.accumulator import PanNukeInstanceMetrics

_DESCRIPTION = """\
PanNuke's official nucleus-level scores. Per image: PQ of the binary maps (bPQ; every
(class channel, id) is one nucleus, later channels winning shared pixels) and PQ of each class
channel (NaN when the ground truth has no nucleus of the class), where pairs of nuclei match when
their IoU is above 0.5, DQ = TP / (TP + FP/2 + FN/2), SQ = sum of matched IoUs / (TP + 1e-6) and
PQ = DQ x SQ; image mPQ = nan-mean of the class PQs. mPQ and bPQ are averaged per tissue, then
over tissues (the headline numbers; image averages are reported too); class PQ is averaged over
images. Detection / classification F1 follow HoVer-Net (centroids paired one to one by a
minimum-distance assignment within a radius, counts pooled over the set).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`):
        Predicted nuclei in the release form, each (H, W, 5) or (H, W, 6): channels 0-4 hold
        the instance ids of neoplastic, inflammatory, connective, dead and epithelial nuclei
        (0 = none); channel 5, if present, is ignored. Ids need not be contiguous.
    references (`List[ndarray]`):
        Ground truth in the same form (PanNuke's `masks.npy` patches).
    tissues (`List[str]`, *optional*):
        The tissue of each image (PanNuke's `types.npy`); without them all images form one group
        and the tissue-averaged scores equal the image averages.
    radius (`float`, *optional*, defaults to 12):
        Centroid pairing radius of the F1 scores in pixels (12 at 40x, 6 at 20x).

Returns:
    mPQ, bPQ (tissue-averaged), mPQ_image, bPQ_image, DQ, SQ, PQ_<class>, DQ_<class>,
    SQ_<class>, F1_detection, precision_detection, recall_detection, F1_<class> (floats),
    num_images, num_tissues, per_tissue ({tissue: {images, mPQ, bPQ, DQ, SQ}}) and counts.

Examples:

    >>> metric = evaluate.load(pannuke_hf.metrics.PANOPTIC_QUALITY_PATH)
    >>> truth = np.zeros((8, 8, 6)); truth[1:4, 1:4, 0] = 7
    >>> results = metric.compute(predictions=[truth], references=[truth], tissues=["Breast"])
    >>> print(round(results["mPQ"], 4), round(results["bPQ"], 4), results["F1_detection"])
    1.0 1.0 1.0
"""

_CITATION = """\
@article{gamper2020pannuke,
  title   = {PanNuke Dataset Extension, Insights and Baselines},
  author  = {Gamper, Jevgenij and Alemi Koohbanani, Navid and Benes, Ksenija and Graham, Simon and Jahanifar, Mostafa and Khurram, Syed Ali and Azam, Ayesha and Hewitt, Katherine and Rajpoot, Nasir},
  journal = {arXiv preprint arXiv:2003.10778},
  year    = {2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PanopticQuality(evaluate.Metric):
    """The ``evaluate`` metric wrapping :class:`~pannuke_hf.metrics.pq.PanNukeInstanceMetrics`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # (H, W, C) ids as float64: whole numbers up to 2**53 stay exact, and fractional
                    # or NaN ids reach _compute intact, to be rejected with the image's index.
                    "predictions": datasets.Sequence(
                        datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
                    ),
                    "references": datasets.Sequence(
                        datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
                    ),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2003.10778"],
        )

    def _compute(
        self,
        predictions: list[Any],
        references: list[Any],
        tissues: Sequence[str] | None = None,
        radius: float = 12.0,
    ) -> dict[str, Any]:
        if tissues is not None and len(tissues) != len(references):
            raise ValueError(f"{len(tissues)} tissues for {len(references)} images")
        metric = PanNukeInstanceMetrics(radius=radius)
        for index, (pred, true) in enumerate(zip(predictions, references)):
            tissue = None if tissues is None else tissues[index]
            metric.update_release(np.asarray(true), np.asarray(pred), tissue, index=index)
        return metric.compute()
