"""`osp serve`: the web page for text to video and the VAE round trip (Gradio, optional extra)."""

from __future__ import annotations

from collections.abc import Callable

from .jobs import ServeOptions, check_gradio


def run_server(options: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Serve the page until Ctrl-C (`InputError` naming the extra when Gradio is missing)."""
    check_gradio()
    from .app import serve

    serve(options, on_ready)


__all__ = ["ServeOptions", "check_gradio", "run_server"]
