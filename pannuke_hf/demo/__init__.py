"""A browser demo of the model: upload H&E images, see and download the nuclei (Gradio).

``build_app(model_path=None)`` returns the page; ``pannuke-hf demo`` starts it locally and
``pannuke-hf space`` writes it as a Hugging Face Space. The processing behind the page is in
:mod:`pannuke_hf.demo.processing` (no Gradio needed). Gradio is imported only when the page is
built, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "launch"]


def build_app(model_path: str | None = None, **kwargs: Any) -> Any:
    """Build the demo page (``gr.Blocks``); see :func:`pannuke_hf.demo.app.build_app`."""
    from .app import build_app as _build_app

    return _build_app(model_path, **kwargs)


def launch(app: Any, port: int | None = None, host: str = "127.0.0.1", **kwargs: Any) -> Any:
    """Start a page built by :func:`build_app`; see :func:`pannuke_hf.demo.app.launch`."""
    from .app import launch as _launch

    return _launch(app, port=port, host=host, **kwargs)
