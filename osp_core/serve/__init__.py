"""`osp serve`: the web page (text to video, the VAE round trip, video editing) and the video API
(`/v1/videos`, OpenAI's shapes) on one server, over one durable job queue and its workers."""

from __future__ import annotations

from collections.abc import Callable

from .session import ServeOptions, check_api_packages, check_gradio, use_gradio_folder


def run_server(options: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C (`InputError` naming the extra when Gradio is missing and the page is on)."""
    from ..device import check_device_name, check_dtype_name

    # the options and names first: their refusals come before Gradio and torch load (seconds)
    options.validate()
    check_device_name(options.device)
    check_dtype_name(options.dtype)
    if options.api or not options.page:
        check_api_packages()
    if options.page:
        use_gradio_folder(options.output_dir)  # before Gradio is imported: it reads the folder then
        check_gradio()
    from .server import serve

    serve(options, on_ready)


__all__ = ["ServeOptions", "check_gradio", "run_server"]
