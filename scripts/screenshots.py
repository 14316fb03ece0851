#!/usr/bin/env python
"""`make screenshots`: docs/serve-t2v.png and docs/serve-vae.png, each tab of `osp serve
--model builtin:shapes` after a run, taken in headless Chromium (the browser tests' helpers).
The PNGs are reduced to 128 colours to stay small in the repository."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.serve.browser

from tests.serve.browser import INSTALL_HINT, Page, ServerProcess, fetch, find_chromium, new_browser  # noqa: E402

PROMPT = "a red circle moving right"
SEED = 0


def save_small(browser: object, path: Path) -> None:
    from PIL import Image

    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    if find_chromium() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        server = ServerProcess(Path(work) / "out")
        browser = new_browser(1280, 1000)
        try:
            page = Page(browser, server.url)
            page.generate(PROMPT, steps=150, seed=SEED)  # the model's own setting
            clip = Path(work) / "clip.mp4"
            clip.write_bytes(fetch(page.wait_for_result()))
            save_small(browser, args.out / "serve-t2v.png")
            page.tab("VAE round trip")
            page.find("#vae-upload input[type=file]").send_keys(str(clip))
            page.wait_for(lambda: "clip.mp4" in page.find("#vae-upload").text.replace("\n", ""), 30)
            page.click("#vae-run", "vae")
            page.wait_for_result("vae")
            save_small(browser, args.out / "serve-vae.png")
        finally:
            browser.quit()
            server.stop()
    for name in ("serve-t2v.png", "serve-vae.png"):
        path = args.out / name
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
