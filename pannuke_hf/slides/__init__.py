"""Whole-slide images: every nucleus of a slide in bounded memory, ready for QuPath.

One module per stage:

* :mod:`.reading`: the reader interface, :func:`open_slide`, the resolution plan;
  :mod:`.readers`: one file per format (OpenSlide, tifffile, plain images);
* :mod:`.tissue`: the tissue mask;
* :mod:`.tiling`: regions, windows, the DataLoader of regions and batched inference;
* :mod:`.merging`: post-processing of one region and ownership of its nuclei;
* :mod:`.writing`: part files while running, the final files at the end;
* :mod:`.pipeline`: :func:`segment_slide`, which runs them in order;
* :mod:`.cohort`: :func:`segment_cohort`: folders, globs and CSVs of slides, one table of results;
* :mod:`.distributed`: the work shared between processes (``torchrun`` / ``accelerate launch``);
* :mod:`.synthetic`: generated slides with their true nuclei.

Nothing here imports ``datasets`` or ``evaluate``; names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SlideError",
    "init_processes",
    "make_synthetic_slide",
    "open_slide",
    "plan_resolution",
    "segment_cohort",
    "segment_slide",
]

_WHERE = {
    "SlideError": ".reading",
    "open_slide": ".reading",
    "plan_resolution": ".reading",
    "segment_slide": ".pipeline",
    "segment_cohort": ".cohort",
    "init_processes": ".distributed",
    "make_synthetic_slide": ".synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(name)
