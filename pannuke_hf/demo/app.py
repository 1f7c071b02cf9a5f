"""The Gradio page of the demo: widgets wired to :mod:`pannuke_hf.demo.processing`.

``build_app()`` returns a ``gr.Blocks``; ``pannuke-hf demo`` launches it on 127.0.0.1 and a Space's
``app.py`` (``pannuke-hf space``) launches it on the Space. Gradio is imported inside the functions,
and its analytics are switched off before that import, so nothing here needs the network.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .processing import (
    MAGNIFICATIONS,
    MAX_PIXELS,
    MAX_SIDE,
    SUMMARY_HEADERS,
    ImageResult,
    example_paths,
    legend_html,
    load_demo_model,
    process_uploads,
    render_overlay,
    training_data_for,
)

__all__ = ["build_app", "footer", "launch", "offline_gradio_environment"]

logger = logging.getLogger(__name__)

#: Environment that keeps Gradio off the network (set before it is imported).
GRADIO_OFFLINE_ENV: dict[str, str] = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_CHECK_VERSION": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

#: Largest upload the server accepts (the pixel limits are checked from each file's header).
MAX_FILE_SIZE: str = "200mb"


def offline_gradio_environment() -> None:
    """Switch off Gradio's analytics and version check (call before importing gradio)."""
    for key, value in GRADIO_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _intro(model_name: str) -> str:
    side = int(MAX_PIXELS**0.5)
    return (
        "# PanNuke nuclei: UNet-FCN\n"
        "Upload H&E images (PNG, JPEG or TIFF; any size up to "
        f"{side:,} x {side:,} pixels, sides up to {MAX_SIDE:,}) or pick a generated example patch. "
        "The model labels every pixel as background or one of five nucleus classes; large images "
        "are predicted tile by tile.\n\n"
        f"Model: `{model_name}`"
    )


def footer(training_data: Any = None) -> str:
    """The page's last line: what the loaded checkpoint was trained on, as its model card says
    (:func:`pannuke_hf.demo.processing.training_data_for`), nothing about data when unknown."""
    said = [training_data.markdown()] if training_data is not None else []
    return " ".join([*said, "A research demo, not a diagnostic tool."])


def _table(rows: list[list[Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [["" if v is None else v for v in row] for row in rows], columns=list(SUMMARY_HEADERS)
    )


def _gallery(results: list[ImageResult], alpha: float) -> list[tuple[Any, str]]:
    return [(render_overlay(r, alpha), r.name) for r in results]


def build_app(
    model_path: str | None = None,
    *,
    model: Any = None,
    processor: Any = None,
    device: str | None = None,
    title: str = "PanNuke nuclei (UNet-FCN)",
) -> Any:
    """Build the demo page.

    Args:
        model_path: checkpoint folder or Hub id; None: the built-in demo checkpoint
            (``python train.py``). Ignored when ``model`` is given.
        model, processor: an already loaded model (eval mode) and image processor, e.g. in tests.
        device: where to load ``model_path`` (default: cuda when available).
        title: the browser tab's title.

    Returns:
        the ``gr.Blocks`` (call ``.launch()``, or :func:`launch`).

    Raises:
        pannuke_hf.demo.processing.DemoModelError: no model could be loaded (the message says how
            to get one).
    """
    offline_gradio_environment()
    import gradio as gr

    training_data = None
    if model is None:
        model, processor, model_name = load_demo_model(model_path, device)
        training_data = training_data_for(model_name)
    else:
        model_name = model_path or type(model).__name__
        if model_path:
            training_data = training_data_for(model_path)
    downloads_root = Path(tempfile.mkdtemp(prefix="pannuke-demo-"))

    def segment(files: Any, alpha: float, magnification: str, progress: Any = gr.Progress()) -> tuple:
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        if not paths:
            message = (
                "Nothing to segment: upload one or more H&E images (PNG, JPEG, TIFF) or pick an example."
            )
            return message, [], _table([]), None, []
        folder = Path(tempfile.mkdtemp(dir=downloads_root))
        try:
            out = process_uploads(
                model,
                processor,
                paths,
                folder,
                magnification=MAGNIFICATIONS.get(magnification, 40),
                progress=lambda fraction, message: progress(fraction, desc=message),
            )
        except Exception as err:  # never a stack trace in the page; the log keeps it
            logger.exception("demo: the run failed")
            return f"**Error:** {type(err).__name__}: {err}", [], _table([]), None, []
        files_out = [str(p) for p in out.files] or None
        return out.status_markdown(), _gallery(out.results, alpha), _table(out.rows), files_out, out.results

    def restyle(results: list[ImageResult] | None, alpha: float) -> list[tuple[Any, str]]:
        return _gallery(results or [], alpha)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(_intro(model_name))
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    label="H&E images (PNG, JPEG, TIFF)",
                    file_count="multiple",
                    file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff"],
                    elem_id="inputs",
                )
                magnification = gr.Radio(
                    list(MAGNIFICATIONS),
                    value=next(iter(MAGNIFICATIONS)),
                    label="Scan magnification",
                    info="The model works at 40x; a 20x image is enlarged 2x for it",
                    elem_id="magnification",
                )
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
                run = gr.Button("Segment nuclei", variant="primary", elem_id="run")
                examples = [[[str(p)]] for p in example_paths()]
                if examples:
                    gr.Examples(examples, inputs=[files], label="Generated example patches (256 x 256, 40x)")
            with gr.Column(scale=2):
                status = gr.Markdown(
                    "Upload one or more H&E images or pick an example, then press *Segment nuclei*.",
                    elem_id="status",
                )
                gallery = gr.Gallery(
                    label="Overlay: class colours and nucleus outlines",
                    format="png",
                    columns=1,
                    height="auto",
                    object_fit="contain",
                    elem_id="overlay",
                )
                gr.HTML(legend_html())
        table = gr.Dataframe(
            value=_table([]),
            headers=list(SUMMARY_HEADERS),
            label="Nuclei per class",
            interactive=False,
            elem_id="counts",
        )
        downloads = gr.File(
            label="Downloads: label map, instance map, per-nucleus CSV, GeoJSON (QuPath), summary",
            file_count="multiple",
            interactive=False,
            elem_id="downloads",
        )
        gr.Markdown(footer(training_data), elem_id="footer")
        results = gr.State([])
        run.click(
            segment,
            inputs=[files, alpha, magnification],
            outputs=[status, gallery, table, downloads, results],
        )
        # only the drawing is redone when the opacity moves; the last value wins while dragging
        alpha.change(restyle, inputs=[results, alpha], outputs=[gallery], trigger_mode="always_last")
    app.downloads_root = downloads_root
    return app


def launch(app: Any, port: int | None = None, host: str = "127.0.0.1", **kwargs: Any) -> Any:
    """Start the page on ``host:port`` without a share link (nothing leaves the machine).

    Returns what ``gr.Blocks.launch`` returns; pass ``prevent_thread_lock=True`` to keep going.
    """
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        allowed_paths=[str(app.downloads_root)],
        **kwargs,
    )
