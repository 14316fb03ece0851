"""What the page's server accepts and how it serves files, enforced on the server (an ASGI
middleware around Gradio's app): the browser's file picker is no check.

- An upload (`POST .../gradio_api/upload`) is answered only if every file in it is a video or
  image by its content (`check_media_file`); otherwise the refused files are deleted and the
  answer is 415 with one line naming the user's file.
- A file the server sends (`.../file=...`) never renders in the page's origin: only raster
  images and videos are sent inline, everything else as a download, and every file response
  carries `nosniff` and a sandboxing Content-Security-Policy (no script runs even if a browser
  renders it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.media import check_media_file

Scope = dict[str, Any]
Message = dict[str, Any]

UPLOAD_ROUTE = re.compile(r"/gradio_api/upload/?$")
FILE_ROUTE = re.compile(r"/file[=/]")
# what may render inline: pixels and video, no markup (image/svg+xml is markup)
INLINE_TYPES = frozenset({"video/mp4", "video/webm", "video/quicktime", "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})
FILE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; media-src 'self'; img-src 'self'; sandbox"),
]


class UploadGuard:
    """ASGI middleware: refuses uploads that are not media, sends files so they cannot run."""

    def __init__(self, app: Any, upload_dir: str | Path) -> None:
        self.app = app
        self.upload_dir = Path(upload_dir).resolve()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["method"] == "POST" and UPLOAD_ROUTE.search(scope["path"]):
            await self.upload(scope, receive, send)
        elif FILE_ROUTE.search(scope["path"]):
            await self.app(scope, receive, self.harden_file_response(send))
        else:
            await self.app(scope, receive, send)

    async def upload(self, scope: Scope, receive: Any, send: Any) -> None:
        """Let Gradio store the files, then check them before the client hears of them.
        Gradio's background moves have run when `self.app` returns."""
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None or start["status"] != 200:
            await self.replay(messages, send)
            return
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        try:
            stored = [Path(p) for p in json.loads(body)]
        except (ValueError, TypeError):
            await self.replay(messages, send)
            return
        refused: dict[Path, str] = {}
        for path in stored:
            try:
                check_media_file(path)
            except InputError as exc:
                refused[path] = str(exc)
            except OSError:
                refused[path] = f"'{path.name}' could not be read back (upload it again)"
        if not refused:
            await self.replay(messages, send)
            return
        # only the refused files go: an accepted file of the same request may be an earlier
        # upload of the same content (Gradio stores by content hash), another session's
        for path in refused:
            self.discard(path)
        refusal = next(iter(refused.values()))
        await send({"type": "http.response.start", "status": 415, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": refusal.encode()})

    def discard(self, path: Path) -> None:
        """Delete a refused upload and its content-hash folder, inside the upload folder only."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.upload_dir):
            return
        resolved.unlink(missing_ok=True)
        folder = resolved.parent
        if folder != self.upload_dir and folder.is_relative_to(self.upload_dir):
            try:
                folder.rmdir()  # only if empty: another upload of the same content may live there
            except OSError:
                pass

    @staticmethod
    async def replay(messages: list[Message], send: Any) -> None:
        for message in messages:
            await send(message)

    @staticmethod
    def harden_file_response(send: Any) -> Any:
        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": hardened_headers(message.get("headers", []))}
            await send(message)

        return send_hardened


def hardened_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A file response's headers: inline only for `INLINE_TYPES`, otherwise an attachment of
    type application/octet-stream; always nosniff and a sandboxing CSP."""
    drop = {b"content-type", b"content-disposition", *(name for name, _ in FILE_HEADERS)}
    kept = [(k, v) for k, v in headers if k.lower() not in drop]
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"").split(b";")[0].strip().lower()
    disposition = next((v for k, v in headers if k.lower() == b"content-disposition"), b"")
    filename = re.search(rb"filename\*?=[^;]+", disposition)
    if content_type.decode("latin-1") in INLINE_TYPES:
        kept.append((b"content-type", content_type))
        kept.append((b"content-disposition", b"inline" + (b"; " + filename.group(0) if filename else b"")))
    else:
        kept.append((b"content-type", b"application/octet-stream"))
        kept.append((b"content-disposition", b"attachment" + (b"; " + filename.group(0) if filename else b"")))
    return kept + FILE_HEADERS
