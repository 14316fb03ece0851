"""`osp serve`: the web page for text to video, the VAE round trip and video editing (Gradio, optional extra)."""

from __future__ import annotations

from collections.abc import Callable

from .session import ServeOptions, check_gradio, use_gradio_folder


def run_server(options: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Serve the page until Ctrl-C (`InputError` naming the extra when Gradio is missing)."""
    from ..device import check_device_name, check_dtype_name

    # the options and names first: their refusals come before Gradio and torch load (seconds)
    options.validate()
    check_device_name(options.device)
    check_dtype_name(options.dtype)
    use_gradio_folder(options.output_dir)  # before Gradio is imported: it reads the folder then
    check_gradio()
    from .app import serve

    serve(options, on_ready)


__all__ = ["ServeOptions", "check_gradio", "run_server"]
