"""`osp serve` as a whole: the job queue in the output folder, the worker processes that run
its jobs, and the faces on one HTTP server (the page at /, the video API at /v1).

Nothing here imports Gradio: the API alone (`--no-page`) starts without it. The jobs load their
models in the workers; the server only checks the device once.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from ..io.atomic import ensure_writable_dir
from ..pipelines.repository import ModelRepository
from .queue import DATABASE_NAME, SqliteJobQueue
from .session import ServeOptions
from .worker import WorkerConfig, WorkerPool, is_alive

log = logging.getLogger("osp.serve")


class Service:
    """The queue and its workers, shared by the page and the API."""

    def __init__(self, options: ServeOptions) -> None:
        from ..device import resolve

        resolve(options.device, options.dtype)  # a bad --device/--dtype fails before anything starts
        self.options = options
        self.repository = ModelRepository.resolve(options.model)
        self.output_dir = options.output_dir.absolute()
        ensure_writable_dir(self.output_dir)
        self.queue = SqliteJobQueue(self.output_dir / DATABASE_NAME)
        config = WorkerConfig(str(self.queue.path), options.device, options.dtype, options.lease_seconds)
        self.workers = WorkerPool(config, options.workers)

    def start(self) -> None:
        """Put back the jobs a killed server left running (its workers died with it), then start
        the workers."""
        requeued = self.queue.requeue_dead(is_alive)
        if requeued:
            log.warning("%d job(s) were running when the server stopped; they are queued again", requeued)
        self.workers.start()

    def stop(self) -> None:
        self.workers.stop()


def check_listen_address(host: str, port: int) -> None:
    """`InputError` unless `host` resolves and `port` is free on it (the server's own failures
    name its internals, not the command's options)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InputError(f"--host '{host}' is not an address of this machine or a name that resolves", "pass e.g. --host 127.0.0.1 (or 0.0.0.0 for every interface)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise InputError(f"{host}:{port} {reason}", "pass another --port, or stop what uses it" if exc.errno == errno.EADDRINUSE else "pass an address of this machine with --host") from None


def api_routes(service: Service) -> list[Any]:
    """The video API, mounted at /v1."""
    from starlette.routing import Mount

    from .api import ApiContext, create_api

    return [Mount("/v1", app=create_api(ApiContext.of(service)))]


def serve(options: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C; `on_ready(url)` once it answers."""
    check_listen_address(options.host, options.port)  # before anything is loaded or created
    service = Service(options)
    service.start()
    try:
        routes = api_routes(service) if options.api else []
        if options.page:
            from .app import Server

            demo, url = Server(service).launch(routes)
            on_ready(f"{url} (video API: {url.rstrip('/')}/v1)" if options.api else url)
            try:
                wait_for_ctrl_c()
            finally:
                demo.close(verbose=False)
        else:
            serve_api_only(options, routes, on_ready)
    finally:
        service.stop()


def wait_for_ctrl_c() -> None:
    """Block until Ctrl-C or SIGTERM (a service manager's stop): both end the server cleanly,
    the workers handing their jobs back to the queue."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:  # the server runs in its own threads; this one waits for Ctrl-C
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def serve_api_only(options: ServeOptions, routes: list[Any], on_ready: Callable[[str], None]) -> None:
    """The API alone on uvicorn (`--no-page`)."""
    import threading

    import uvicorn
    from starlette.applications import Starlette

    config = uvicorn.Config(Starlette(routes=routes), host=options.host, port=options.port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        raise InputError(f"cannot listen on {options.host}:{options.port}", "pass another --port, or stop what uses it")
    on_ready(f"http://{options.host}:{options.port}/v1")
    try:
        wait_for_ctrl_c()
    finally:
        server.should_exit = True
        thread.join(10)


__all__ = ["Service", "check_listen_address", "serve"]
