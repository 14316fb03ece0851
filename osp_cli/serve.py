"""`osp serve`: the web page (text to video, VAE round trip, video editing) on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt


def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. 0.0.0.0 exposes the page to your network, without any login (see the README).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7860,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for every result (one subfolder per browser session); the page serves files from here only.")] = Path("samples/serve"),
    max_queue: Annotated[int, typer.Option("--max-queue", help="Jobs that may wait for the device; more are refused.")] = 16,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest upload accepted, in MB.")] = 200,
) -> None:
    """Serve a web page for text to video, the VAE round trip and video editing until Ctrl-C."""
    from osp_core.serve import ServeOptions, run_server

    from .console import err

    options = ServeOptions(model=model, host=host, port=port, device=device, dtype=dtype, output_dir=output_dir, max_queue=max_queue, max_upload_mb=max_upload_mb)
    run_server(options, on_ready=lambda url: err.print(f"serving {model} at {url}  (Ctrl-C stops)", highlight=False))
