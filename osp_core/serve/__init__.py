"""`osp serve`: the web page for text to video, the VAE round trip and video editing (Gradio, optional extra)."""

from __future__ import annotations

from collections.abc import Callable

from .session import ServeOptions, check_gradio, use_gradio_folder


def run_server(options: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Serve the page until Ctrl-C (`InputError` naming the extra when Gradio is missing)."""
    use_gradio_folder(options.output_dir)  # before Gradio is imported: it reads the folder then
    check_gradio()
    from .app import serve

    serve(options, on_ready)


__all__ = ["ServeOptions", "check_gradio", "run_server"]
