"""Driving `osp serve` in headless Chromium (the Debian `chromium` + `chromium-driver`
packages, through Selenium): start a server, open sessions, fill the form, read results.
Shared by tests/serve and scripts/screenshots.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

INSTALL_HINT = "headless Chromium not found: apt-get install -y chromium chromium-driver (and pip install selenium)"
SERVE_TIMEOUT = 120  # seconds for `osp serve` to answer (imports torch and Gradio on a busy CPU)
JOB_TIMEOUT = 120  # seconds for one job in the page


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) from PATH, or None when either (or Selenium) is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`osp serve` in a child process; `url` once it prints its address."""

    def __init__(self, output_dir: Path, *extra: str, model: str = "builtin:shapes", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = output_dir.parent / f"serve-{self.port}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        cmd = [sys.executable, "-m", "osp_cli", "serve", "--model", model, "--port", str(self.port), "-o", str(output_dir), *extra]
        self.output_dir = output_dir
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("w"), env=env)
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"at (http://\S+)", self.log.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"osp serve exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"osp serve did not start: {self.log.read_text()[-2000:]}")

    def get(self, path: str) -> tuple[int, bytes]:
        """GET `path` on the server: (status, body)."""
        status, _, body = self.get_with_headers(path)
        return status, body

    def get_with_headers(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET `path` on the server: (status, headers with lower-case names, body)."""
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=30) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

    def upload(self, name: str, data: bytes, *more: tuple[str, bytes]) -> tuple[int, bytes]:
        """POST files (`name`, `data` and any more (name, data) pairs) in one request to Gradio's
        upload route as the page does: (status, body)."""
        boundary = uuid.uuid4().hex
        body = b""
        for part_name, part_data in ((name, data), *more):
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{part_name}"\r\nContent-Type: video/mp4\r\n\r\n'
            body += head.encode() + part_data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url.rstrip("/") + "/gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def new_browser(width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium session (Selenium WebDriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium() or (None, None)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


class Page:
    """One browser session on the page."""

    def __init__(self, browser: Any, url: str) -> None:
        self.browser = browser
        browser.get(url)
        self.wait_for(lambda: self.find("#t2v-generate"), 60)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        found = self.browser.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def wait_for(self, condition: Any, timeout: float = JOB_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"the page did not get there in {timeout}s; status: {self.status('t2v')!r}")

    def type_into(self, css: str, text: str) -> None:
        """Replace the text of an input (textarea, number box) the way a user does."""
        from selenium.webdriver.common.keys import Keys

        element = self.find(css)
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(text)
        element.send_keys(Keys.TAB)  # Gradio takes a number box's value on blur

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        button = next(b for b in self.browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name)
        button.click()

    def generate(self, prompt: str, steps: int = 10, seed: int | None = None) -> None:
        """Fill prompt and steps (and a fixed seed), click Generate."""
        self.type_into("#t2v-prompt textarea", prompt)
        self.type_into("#t2v-steps input[type=number]", str(steps))
        if seed is not None:
            randomize = self.find("#t2v-randomize input")
            if randomize.is_selected():
                randomize.click()
            self.type_into("#t2v-seed input", str(seed))
        self.click("#t2v-generate", "t2v")

    def visible_texts(self, css: str) -> list[str]:
        """The texts of the elements matching `css` that are drawn, read in one script run (the
        page re-renders progress elements many times a second: a Selenium element found first
        may be gone by the time it is asked whether it is displayed)."""
        script = "return Array.from(document.querySelectorAll(arguments[0])).filter(e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden').map(e => e.innerText)"
        return list(self.browser.execute_script(script, css))

    def upload(self, box: str, path: Path) -> None:
        """Put a file in an upload box (`vae-upload`, ...) and wait until the page has taken it."""
        self.find(f"#{box} input[type=file]").send_keys(str(path))
        self.wait_for(lambda: path.name in self.find(f"#{box}").text.replace("\n", ""), 30)

    def sample_clip(self, path: Path, prompt: str, steps: int, seed: int) -> Path:
        """Generate a video in the text-to-video tab and save it at `path` (a clip to upload)."""
        self.generate(prompt, steps=steps, seed=seed)
        path.write_bytes(fetch(self.wait_for_result()))
        return path

    def click(self, button: str, tab: str) -> None:
        """Click a button that starts a job, and wait until the page has taken it: the status
        line is cleared when a job starts (or already changed, for a quick failure)."""
        previous = self.status(tab)
        self.find(button).click()
        self.wait_for(lambda: self.status(tab) != previous or not self.status(tab), 30)

    def status(self, tab: str) -> str:
        box = self.find(f"#{tab}-status textarea")
        return box.get_attribute("value") if box else ""

    def video_url(self, tab: str = "t2v") -> str | None:
        video = self.find(f"#{tab}-video video")
        return video.get_attribute("src") if video else None

    def image_url(self, tab: str = "t2v") -> str | None:
        """The shown image of a one-frame result (it replaces the video player)."""
        image = self.find(f"#{tab}-image img")
        return image.get_attribute("src") if image and image.is_displayed() else None

    def wait_for_result(self, tab: str = "t2v") -> str:
        """The URL of the finished video (raises with the status line if an error shows)."""

        def done() -> str | None:
            status = self.status(tab)  # cleared when a job starts, set when it ends
            if status.startswith("Error"):
                raise AssertionError(status)
            return (self.video_url(tab) or self.image_url(tab)) if status else None

        return self.wait_for(done)

    def file_links(self, tab: str = "t2v") -> list[str]:
        from selenium.webdriver.common.by import By

        return [a.get_attribute("href") for a in self.browser.find_elements(By.CSS_SELECTOR, f"#{tab}-files a[href]")]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def sidecar_of(page: Page, tab: str = "t2v") -> dict[str, Any]:
    """The JSON sidecar linked in the page's download list."""
    link = next(url for url in page.file_links(tab) if url.split("?")[0].endswith(".json"))
    return json.loads(fetch(link))
