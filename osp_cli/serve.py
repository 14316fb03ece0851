"""`osp serve`: the web page (text to video, VAE round trip, video editing) and the video API on
this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt


def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Any address but this machine's own (e.g. 0.0.0.0) needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7860,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for every result and the job database (queue.sqlite3); the server serves files from here only.")] = Path("samples/serve"),
    max_queue: Annotated[int, typer.Option("--max-queue", help="Jobs that may wait for a worker; more are refused (the API answers 429).")] = 16,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest upload accepted, in MB.")] = 200,
    page: Annotated[bool, typer.Option("--page/--no-page", help="Serve the web page at /.")] = True,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the video API (OpenAI's /v1/videos) at /v1.")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes, one job at a time each: one per GPU (each sees one), or CPU processes.")] = 1,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="OSP_API_KEY", help="Require this key: API clients send it as a Bearer token, the page asks for it as its password. Also read from OSP_API_KEY.", show_default=False)] = None,
    lease_seconds: Annotated[float, typer.Option("--lease-seconds", help="How long a worker may go silent before its job is given to another.", hidden=True)] = 30.0,
    lora_dir: Annotated[Path | None, typer.Option("--lora-dir", help="A folder of LoRA adapters (one subfolder each) that API clients may name in `lora`.", show_default=False)] = None,
) -> None:
    """Serve a web page and a video API for text to video, the VAE round trip and video editing until Ctrl-C."""
    from osp_core.serve import ServeOptions, run_server

    from .console import err

    options = ServeOptions(
        model=model, host=host, port=port, device=device, dtype=dtype, output_dir=output_dir, max_queue=max_queue, max_upload_mb=max_upload_mb,
        page=page, api=api, workers=workers, api_key=api_key, lease_seconds=lease_seconds, lora_dir=lora_dir,
    )
    run_server(options, on_ready=lambda url: err.print(f"serving {model} at {url}  (Ctrl-C stops)", highlight=False))
